"""The process's exit status under twistd (both twistd plugins use it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def exit_zero_after_a_clean_stop(reactor: Any, clean: Callable[[], bool]) -> None:
    """Under twistd, a stop that went as planned exits 0, even on SIGTERM.

    twistd re-raises the signal that stopped the reactor once it is done (status 143, or -15
    as a subprocess), which supervisors and scripts read as a crash. The signal it re-raises
    is the reactor's ``_exitSignal`` (`twisted.internet.base._ISupportsExitSignalCapturing`):
    forgotten after a clean stop, kept when ``clean()`` says something was cut off.
    """

    def forget_the_signal() -> None:
        if clean() and getattr(reactor, "_exitSignal", None) is not None:
            reactor._exitSignal = None

    reactor.addSystemEventTrigger("after", "shutdown", forget_the_signal)
