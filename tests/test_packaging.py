"""Packaging: everything the installed relay imports is declared in install_requires."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import pathlib
import re
import sys

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).parent.parent
SOURCES = [
    *sorted((ROOT / "smpprelay").rglob("*.py")),
    ROOT / "twisted/plugins/smpprelay_plugin.py",
]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    """install_requires, plus what the extras it asks for (twisted[tls]) bring by name."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].strip().splitlines()
    declared = set()
    for requirement in map(Requirement, lines):
        declared.add(_normal(requirement.name))
        for extra in requirement.extras:
            for line in importlib.metadata.requires(requirement.name) or []:
                brought = Requirement(line)
                if brought.marker is not None and brought.marker.evaluate({"extra": extra}):
                    declared.add(_normal(brought.name))
    return declared


def _imported() -> dict[str, str]:
    """Distribution (normalised) -> a module of ours that imports it, for third-party imports."""
    owners = importlib.metadata.packages_distributions()
    found: dict[str, str] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "smpprelay":
                    continue
                candidates = {_normal(d) for d in owners.get(top, [])} - {"smpprelay"}
                if len(candidates) > 1:  # a namespace package (zope.*): the dotted name decides
                    candidates &= {_normal(".".join(name.split(".")[:2]))}
                assert len(candidates) == 1, f"{path.name}: cannot tell who provides {name}"
                found.setdefault(candidates.pop(), path.name)
    return found


def test_every_runtime_import_is_declared() -> None:
    """A distribution the relay imports must be in install_requires (or a declared extra such
    as twisted[tls]), not merely pulled in by another package's own dependencies."""
    imported = _imported()
    assert {"twisted", "pyopenssl", "pyyaml"} <= imported.keys()  # the scan sees imports
    missing = {dist: module for dist, module in imported.items() if dist not in _declared()}
    assert missing == {}


def test_every_package_is_installed() -> None:
    """setup.cfg lists its packages one by one: a new one left out would be missing from a
    `pip install .` (twistd smpprelay would fail to import it) while the tests, run from the
    source tree, pass."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "smpprelay").rglob("__init__.py")
    }
    assert found <= listed, found - listed
