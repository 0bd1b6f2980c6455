"""Logs for log shippers: one JSON object per line.

``twistd -n --logger smpprelay.logs.json_observer smpprelay ...`` replaces twistd's text log
with this observer (twistd's ``--logger`` takes the name of a log observer factory). Each
line holds ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``message`` (the event's text),
``failure`` (a traceback, when there is one), and every field the event was logged with
(``account``, ``peer``, ``sequence``, ``message_id``, ``status``...), so a shipper can index
them without parsing the text. Values that are not JSON types are written as text.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent

# Keys the logging system itself adds (legacy twisted.python.log ones too).
_SYSTEM_KEYS = {"format", "message", "isError", "system", "time", "why", "failure", "log_trace"}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def event_as_json(event: LogEvent) -> str:
    """One log event as one line of JSON (with its newline)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace") or event.get("system") or "-",
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and key not in _SYSTEM_KEYS and key not in record:
            record[key] = _plain(value)
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_observer(out: IO[str] | None = None) -> ILogObserver:
    """A log observer writing one JSON object per line to ``out`` (default: stdout)."""
    return FileLogObserver(out if out is not None else sys.stdout, event_as_json)
