"""glibc's mmap threshold, fixed at start so that freed large blocks go back to the system."""

from __future__ import annotations

import ctypes
import platform

import pytest

from smpprelay import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_threshold() -> None:
    assert malloc.fix_mmap_threshold() is True


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
