"""`smpprelay.logs`: a twisted.logger event as one line of JSON."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay.logs import json_observer


def test_event_as_json_carries_the_fields_level_and_failure() -> None:
    """One line, valid JSON: time, level, namespace, message and the event's own fields."""
    out = io.StringIO()
    log = Logger(namespace="smpprelay.test", observer=json_observer(out))
    log.warn(
        "{account} from {peer}: seq {sequence} answered {status}",
        account="app1",
        peer="127.0.0.1:4000",
        sequence=7,
        status="ESME_RTHROTTLED",
        message_id=b"ABC",
        other=object(),
    )
    try:
        raise ValueError("boom")
    except ValueError:
        log.failure("it failed", Failure())
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "warn"
    assert first["namespace"] == "smpprelay.test"
    assert first["message"] == "app1 from 127.0.0.1:4000: seq 7 answered ESME_RTHROTTLED"
    assert (first["account"], first["peer"], first["sequence"]) == ("app1", "127.0.0.1:4000", 7)
    assert first["message_id"] == "ABC"
    assert first["other"].startswith("<object object")
    assert first["time"].endswith("+00:00")
    assert second["level"] == "critical"
    assert "ValueError: boom" in second["failure"]
