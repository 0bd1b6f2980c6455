"""The listening side of the relay: a `Listener` service per port that stops the start when it
cannot listen, and the apps' listeners as the configuration asks (plain, TLS, behind the PROXY
protocol, or on a socket a `workers:` parent handed over)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from typing_extensions import override

from smpprelay import tls
from smpprelay.config import Config
from smpprelay.metrics import Metrics
from smpprelay.proxy_protocol import ProxyEndpoint
from smpprelay.workers import AdoptedEndpoint

log = Logger()

# The apps' listeners, by name (the name is in their log lines and errors).
PLAIN_LISTENER = "SMPP"
TLS_LISTENER = "SMPP over TLS"
Endpoints = Mapping[str, IStreamServerEndpoint]


def tcp_server(reactor: Any, host: str, port: int) -> IStreamServerEndpoint:
    """A TCP listening endpoint on ``host`` (IPv4 or IPv6) and ``port``."""
    interface = host.replace(":", r"\:")
    return serverFromString(reactor, f"tcp:{port}:interface={interface}")  # type: ignore[no-any-return]


class ListenFailed(SystemExit):
    """A listener could not have its port: the process must not run without it.

    A `SystemExit`, so that twistd prints this one line and exits with status 1 instead of a
    traceback (twistd lets an exception from ``privilegedStartService`` escape as it is).
    twistd logs what reaches stderr, so the line is in the log too, daemonised or not.
    """


class Listener(StreamServerEndpointService):
    """Listens on an endpoint while running; ``port`` is readable once listening (port 0).

    Listening starts in ``privilegedStartService`` (so a port below 1024 works with
    ``twistd --uid``), and a port that cannot be had stops the start with `ListenFailed`.
    """

    # As twisted.application.strports.service does: a failed listen() raises at start
    # instead of being logged while the process runs on without its port.
    _raiseSynchronously = True
    factory: IProtocolFactory

    def __init__(
        self, name: str, endpoint: IStreamServerEndpoint, factory: IProtocolFactory
    ) -> None:
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]
        self.label = name
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] | None = None

    @override
    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]
        except CannotListenError as error:
            raise ListenFailed(f"smpprelay: {self.label}: {error}") from None
        listening: Deferred[IListeningPort] = Deferred()
        self.listening = listening

        def listened(port: IListeningPort | None) -> IListeningPort | None:
            # None: the endpoint failed later than listen() (logged by the base class).
            if port is not None:
                self.port = port
                address = port.getHost()
                log.info(
                    "{name} listening on {host}:{port}",
                    name=self.label,
                    host=getattr(address, "host", "?"),
                    port=getattr(address, "port", "?"),
                )
                listening.callback(port)
            return port

        waiting = self._waitingForPort
        assert waiting is not None  # set by the base class's privilegedStartService
        waiting.addCallback(listened)

    @override
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]

    @override
    def stopService(self) -> Deferred[None]:
        self.port = None  # not ready from now on
        return super().stopService()  # type: ignore[no-any-return,no-untyped-call]


def app_listeners(
    config: Config, reactor: Any, metrics: Metrics, factory: IProtocolFactory, given: Endpoints
) -> list[Listener]:
    """The apps' listeners: the plain port first, then TLS (the config has one or both);
    ``given`` ones ("plain", "tls") replace the configured (smpprelay.workers adopts fds)."""
    listen = config.listen
    timeout = config.limits.session_init  # the header is part of getting to a bind
    listeners = []
    if listen.port is not None:
        endpoint = given.get("plain") or tcp_server(reactor, listen.host, listen.port)
        if listen.proxy_protocol:
            endpoint = ProxyEndpoint(endpoint, metrics, reactor, timeout)
        listeners.append(Listener(PLAIN_LISTENER, endpoint, factory))
    if listen.tls is not None:
        tls_endpoint = given.get("tls") or tls.server_endpoint(reactor, listen.host, listen.tls)
        if listen.proxy_protocol:
            # The header comes before the TLS handshake: TLS goes inside the PROXY wrapper,
            # over the same port as plain TCP (or the worker's adopted socket without its TLS).
            options = tls.server_options(listen.tls)
            given_tls = given.get("tls")
            inner = (
                AdoptedEndpoint(reactor, given_tls.fd, given_tls.family)
                if isinstance(given_tls, AdoptedEndpoint)
                else tcp_server(reactor, listen.host, listen.tls.port)
            )
            tls_endpoint = ProxyEndpoint(inner, metrics, reactor, timeout, options)
        listeners.append(Listener(TLS_LISTENER, tls_endpoint, factory))
        expiry = tls.expires(listen.tls.cert, "listen.tls.cert")
        metrics.certificate_expiry.labels("listen").set(expiry)
    return listeners
