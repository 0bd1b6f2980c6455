"""Suite-wide fixtures and settings.

- Every test fails if anything logs an unhandled error (an Unhandled Error in Deferred, a
  ``log.failure``, a NoTransition...): such an error is a bug even when the assertions pass. A
  test that provokes one on purpose says so with ``@pytest.mark.logs_errors`` and checks the
  events itself.
- Hypothesis profiles: ``dev`` (50 examples, the default) keeps a developer's run short; ``ci``
  (300 examples) is what CI runs, chosen with ``HYPOTHESIS_PROFILE=ci``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings
from twisted.logger import LogEvent, formatEvent

from tests.fakes import captured_logs, is_error
from tests.fakes.redis_server import RedisServer

settings.register_profile("dev", max_examples=50)
settings.register_profile("ci", max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "logs_errors: the test logs errors on purpose; do not fail it for them"
    )


@pytest.fixture(autouse=True)
def logged_errors(request: pytest.FixtureRequest) -> Iterator[list[LogEvent]]:
    """The errors logged while the test runs; the test fails if there are any, unless it is
    marked ``logs_errors``."""
    with captured_logs(is_error) as errors:
        yield errors
    if request.node.get_closest_marker("logs_errors") is None:
        assert not errors, [formatEvent(event) for event in errors]


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, for this test only."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
