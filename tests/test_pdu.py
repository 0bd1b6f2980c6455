"""Tests for smpprelay.pdu, the façade: it re-exports the objects of smpprelay.smpp and receipts.

The code itself is tested beside its module: tests/smpp/ and tests/test_receipts.py.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from smpprelay import pdu, receipts
from smpprelay.smpp import (
    binds,
    constants,
    data,
    framing,
    multi,
    queries,
    short_message,
    validation,
)

HOMES = (constants, framing, short_message, validation, binds, data, multi, queries, receipts)


def test_pdu_exports_every_public_name_of_its_homes_once() -> None:
    """pdu.__all__ is the homes' __all__ together, each name once, and pdu defines nothing."""
    assert sorted(pdu.__all__) == sorted(name for home in HOMES for name in home.__all__)
    public = {name for name in vars(pdu) if not name.startswith("_")} - {"annotations"}
    assert public == set(pdu.__all__)


@pytest.mark.parametrize("home", HOMES, ids=lambda home: home.__name__)
def test_pdu_names_are_the_same_objects(home: ModuleType) -> None:
    """Each name is its home's own object, not a copy or a wrapper."""
    for name in home.__all__:
        assert getattr(pdu, name) is getattr(home, name), name
