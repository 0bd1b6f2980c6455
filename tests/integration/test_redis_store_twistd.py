"""``twistd -n smpprelay`` with ``store: {backend: redis}``: it starts, relays a submit and its
receipt through routes kept in Redis, says why it is not ready while Redis is down (refusing
submits with ESME_RMSGQFUL), recovers by itself and stops cleanly."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import smpplib.client
import smpplib.consts
import smpplib.exceptions
import yaml

from tests.fakes.redis_server import RedisServer

from .conftest import free_port
from .twistd import (
    running,
    stop,
    submit_and_get_receipt,
    twistd_args,
    wait_until_accepting,
    wait_until_ready,
)


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def submit_status(port: int) -> int:
    client = smpplib.client.Client("127.0.0.1", port, timeout=5)
    client.connect()
    try:
        client.bind_transmitter(system_id="app1", password="secret1")
        try:
            client.send_message(
                source_addr="1", destination_addr="447700900123", short_message=b"x"
            )
            answer = client.read_pdu()
        except smpplib.exceptions.PDUError as error:
            return int(error.args[1])
        return int(answer.status)
    finally:
        client.disconnect()


def test_twistd_with_a_redis_store(tmp_path: Path, redis_server: RedisServer) -> None:
    smpp_port, metrics_port = free_port(), free_port()
    config = tmp_path / "relay.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": smpp_port},
                "metrics": {"host": "127.0.0.1", "port": metrics_port},
                "clients": [{"system_id": "app1", "password": "secret1"}],
                "store": {"backend": "redis", "url": redis_server.url, "key_prefix": "it:"},
            }
        )
    )
    with running(twistd_args("smpprelay", "--config", str(config)), tmp_path) as (process, log):
        wait_until_accepting(smpp_port, process, log)
        wait_until_ready(metrics_port, log)
        resp, receipt = submit_and_get_receipt(smpp_port, "app1", "secret1")
        assert resp.status == smpplib.consts.SMPP_ESME_ROK
        assert receipt.receipted_message_id == resp.message_id
        keys = redis_server.command("KEYS", "it:*")
        assert b"it:secret" in keys
        assert b"it:r:default:" in keys

        redis_server.stop(kill=True)
        deadline = time.monotonic() + 10
        while readyz(metrics_port)[0] == 200:
            assert time.monotonic() < deadline, "still ready with Redis down"
            time.sleep(0.05)
        code, body = readyz(metrics_port)
        assert code == 503
        assert str(body["reason"]).startswith("store cannot write: redis: ")
        assert submit_status(smpp_port) == smpplib.consts.SMPP_ESME_RMSGQFUL

        redis_server.start()
        wait_until_ready(metrics_port, log)
        assert submit_status(smpp_port) == smpplib.consts.SMPP_ESME_ROK
        text = stop(process, log)
    assert "store redis://127.0.0.1:" in text
    assert "Traceback" not in text
