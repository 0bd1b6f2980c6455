"""A real HAProxy (send-proxy-v2) in front of ``twistd -n smpprelay`` with
``listen.proxy_protocol: true``: the relay sees the app's address from the header.

Apps and HAProxy are all on 127.0.0.1 here, so HAProxy connects to the relay from another
address (``source 127.0.0.2``): the TCP peer the relay sees is 127.0.0.2, the header's is the
app's 127.0.0.1, and the accounts' allowed_ips tell which one the relay used.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import yaml

from smpprelay import pdu
from tests.certs import make_certs

from .apps import app_context
from .conftest import free_port
from .twistd import (
    running,
    stop,
    submit_and_get_receipt,
    twistd_args,
    wait_until_accepting,
    wait_until_ready,
)

HAPROXY = shutil.which("haproxy")
HAPROXY_SOURCE = "127.0.0.2"  # where HAProxy connects to the relay from

pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (Debian: apt-get install haproxy; .ci/run)"
)


def _haproxy_config(front: int, relay: int, tls_front: int, tls_relay: int) -> str:
    return f"""
global
    log stdout format raw local0
defaults
    mode tcp
    log global
    option tcplog
    timeout client 30s
    timeout server 30s
    timeout connect 5s
frontend smpp
    bind 127.0.0.1:{front}
    default_backend relay
frontend smpps
    bind 127.0.0.1:{tls_front}
    default_backend relay_tls
backend relay
    server r1 127.0.0.1:{relay} send-proxy-v2 source {HAPROXY_SOURCE}
backend relay_tls
    server r1 127.0.0.1:{tls_relay} send-proxy-v2 source {HAPROXY_SOURCE}
"""


def _refused(metrics_port: int) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(
        r'^smpprelay_connections_refused_total\{reason="proxy_header"\} (\S+)$', text, re.M
    )
    assert match is not None, text
    return float(match[1])


def _bind_through(port: int, system_id: str, ssl_context: ssl.SSLContext | None = None) -> None:
    """Bind and unbind; smpplib raises PDUError on a refused bind."""
    client = smpplib.client.Client("127.0.0.1", port, timeout=5, ssl_context=ssl_context)
    client.connect()
    try:
        client.bind_transceiver(system_id=system_id, password="secret1")
        client.unbind()
    finally:
        client.disconnect()


def test_haproxy_send_proxy_v2_gives_the_relay_the_apps_address(tmp_path: Path) -> None:
    assert HAPROXY is not None
    certs = make_certs(tmp_path)
    relay_port, tls_port, metrics_port = free_port(), free_port(), free_port()
    front, tls_front = free_port(), free_port()
    (tmp_path / "relay.yaml").write_text(
        yaml.safe_dump(
            {
                "listen": {
                    "host": "127.0.0.1",
                    "port": relay_port,
                    "proxy_protocol": True,
                    "tls": {"port": tls_port, "cert": certs.cert, "key": certs.key},
                },
                "metrics": {"host": "127.0.0.1", "port": metrics_port},
                "clients": [
                    # The apps' address: allowed only if the relay reads it from the header.
                    {"system_id": "app1", "password": "secret1", "allowed_ips": ["127.0.0.1"]},
                    # HAProxy's address: a bind allowed only if the relay took the TCP peer.
                    {"system_id": "app2", "password": "secret1", "allowed_ips": [HAPROXY_SOURCE]},
                ],
            }
        )
    )
    haproxy_cfg = tmp_path / "haproxy.cfg"
    haproxy_cfg.write_text(_haproxy_config(front, relay_port, tls_front, tls_port))
    haproxy_dir = tmp_path / "haproxy"
    haproxy_dir.mkdir()
    relay_args = twistd_args("smpprelay", "--config", str(tmp_path / "relay.yaml"))
    with running(relay_args, tmp_path) as (relay, log):
        wait_until_ready(metrics_port, log)
        with running([HAPROXY, "-db", "-f", str(haproxy_cfg)], haproxy_dir) as (proxy, hlog):
            wait_until_accepting(front, proxy, hlog)

            resp, receipt = submit_and_get_receipt(front, "app1", "secret1")
            assert resp.status == smpplib.consts.SMPP_ESME_ROK
            assert receipt.receipted_message_id == resp.message_id
            # TLS goes through HAProxy untouched, after the header (a bind only: the same
            # submit again would be the dedup rule's duplicate).
            _bind_through(tls_front, "app1", app_context(certs.ca))

            with pytest.raises(smpplib.exceptions.PDUError) as refused:
                _bind_through(front, "app2")
            assert refused.value.args[1] == smpplib.consts.SMPP_ESME_RBINDFAIL
            assert _refused(metrics_port) == 0

            # Straight to the relay, no header: closed unanswered, logged and counted.
            with socket.create_connection(("127.0.0.1", relay_port), timeout=5) as sock:
                sock.sendall(pdu.bind_request("transceiver", 1, "app1", "secret1"))
                try:
                    answer = sock.recv(100)
                except ConnectionResetError:  # aborted: nothing was read, so an RST
                    answer = b""
                assert answer == b""
            assert _refused(metrics_port) == 1
        text = stop(relay, log)
    assert len(re.findall(r"app1 bound as transceiver from 127\.0\.0\.1:\d+", text)) == 2, text
    assert re.search(r"bind refused from 127\.0\.0\.1:\d+: address_not_allowed", text), text
    assert re.search(r"127\.0\.0\.1:\d+: no PROXY header; closing", text), text
    # HAProxy's address only where the config's allowed_ips are logged: no app is seen there.
    seen = [line for line in text.splitlines() if HAPROXY_SOURCE in line]
    assert all("may bind from" in line for line in seen), seen
    assert "Traceback" not in text
    assert subprocess.run([HAPROXY, "-c", "-f", str(haproxy_cfg)], check=False).returncode == 0
