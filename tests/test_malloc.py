"""glibc's mmap threshold, fixed at start so that freed large blocks go back to the system."""

from __future__ import annotations

import ctypes
import gc
import platform
import subprocess
import sys

import pytest
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock

from smpprelay import malloc, service, tap
from smpprelay.gc_tuning import THRESHOLDS, tune_collector
from smpprelay.reload import ReloadService


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_threshold() -> None:
    """In a child process: the allocator of the test run itself stays as it was."""
    code = "from smpprelay import malloc; print(malloc.fix_mmap_threshold())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_twistd_smpprelay_fixes_it_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    # What makeService reads of the relay it built: where the reload service goes, and the
    # parts that reload reconfigures (not used here).
    built = MultiService()
    built.live = built.metrics = None  # type: ignore[attr-defined]

    def fix() -> bool:
        events.append("fixed")
        return True

    def build(config: object, reactor: object) -> object:
        events.append("built")
        return built

    monkeypatch.setattr(malloc, "fix_mmap_threshold", fix)
    monkeypatch.setattr(service, "build", build)
    options = tap.Options()  # type: ignore[no-untyped-call]
    options.parseOptions([])  # type: ignore[no-untyped-call]
    # A fake reactor: makeService registers process-wide hooks (the collector's tuning once
    # running, the exit status after a stop) that must not land on the test runner's reactor.
    reactor = MemoryReactorClock()
    assert tap.makeService(options, reactor) is built
    assert [call[0] for call in reactor.whenRunningHooks] == [tune_collector]
    assert len(reactor.triggers["after"]["shutdown"]) == 1
    assert events == ["fixed", "built"]
    assert [type(child) for child in built] == [ReloadService]


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoMallopt:
        def __init__(self, name: str | None) -> None:
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert malloc.fix_mmap_threshold() is False


def test_a_refusal_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    class Refusing:
        def __init__(self, name: str | None) -> None:
            self.mallopt = self

        def __call__(self, option: int, value: int) -> int:
            calls.append((option, value))
            return 0  # mallopt's "error"

    monkeypatch.setattr(ctypes, "CDLL", Refusing)
    assert malloc.fix_mmap_threshold(4096) is False
    assert calls == [(malloc.M_MMAP_THRESHOLD, 4096)]


def test_the_collector_is_frozen_and_its_thresholds_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Process-wide state: the real calls are recorded, not made (the test runner's collector
    keeps its own settings)."""
    calls: list[object] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "set_threshold", lambda *values: calls.append(values))
    tune_collector()
    assert calls == ["freeze", THRESHOLDS]
    assert THRESHOLDS[0] > gc.get_threshold()[0]  # fewer young collections than the default
