"""The services `build` wires: here, the password pool's start and stop."""

from __future__ import annotations

import threading

import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool

from smpprelay.auth import ThreadPoolService


@pytest_twisted.ensureDeferred
async def test_password_pool_stops_without_blocking_the_reactor() -> None:
    """Stopping the password pool while a check runs returns at once with a Deferred (the
    join happens off the reactor thread); it fires once the check is done and the pool's
    threads are gone."""
    from twisted.internet import reactor

    pool = ThreadPool(minthreads=0, maxthreads=1, name="test-passwords")
    service = ThreadPoolService(pool, reactor)
    service.startService()
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_check() -> None:
        started.set()
        release.wait(10)
        finished.set()

    pool.callInThread(slow_check)
    assert await deferToThread(started.wait, 10)
    stopped = service.stopService()
    assert not finished.is_set()  # stopService did not wait for the running check
    assert not stopped.called
    release.set()
    await stopped
    assert finished.is_set()
    assert pool.joined
    assert not any(thread.is_alive() for thread in pool.threads)
