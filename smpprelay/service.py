"""``build(config, reactor) -> RelayService``: the only place that knows every part."""

from __future__ import annotations

import gc
import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from smpprelay import tls
from smpprelay.access import Access
from smpprelay.auth import make_portal
from smpprelay.config import Config, UpstreamConfig, default_config
from smpprelay.connection import SmppConnection
from smpprelay.downstream import DownstreamFactory, DownstreamSession, SessionRegistry
from smpprelay.filters import build_chain
from smpprelay.metrics import Metrics, metrics_resource
from smpprelay.relay import Relay
from smpprelay.router import Router
from smpprelay.simulator import Simulator, SimulatorFactory
from smpprelay.store.memory import HeldDeliveries, ReceiptRoutes
from smpprelay.upstream import UpstreamService, build_upstream

log = Logger()

# How often expired receipt routes and held deliveries are swept.
SWEEP_INTERVAL = 10.0
# How often the rules' windows are swept: held parts get their EXPIRED receipt this late at most.
RULES_SWEEP_INTERVAL = 1.0


def tcp_server(reactor: Any, host: str, port: int) -> IStreamServerEndpoint:
    """A TCP listening endpoint on ``host`` (IPv4 or IPv6) and ``port``."""
    interface = host.replace(":", r"\:")
    return serverFromString(reactor, f"tcp:{port}:interface={interface}")  # type: ignore[no-any-return]


class Listener(Service):
    """Listens on an endpoint while running; ``port`` is readable once listening (port 0)."""

    def __init__(
        self, name: str, endpoint: IStreamServerEndpoint, factory: IProtocolFactory
    ) -> None:
        self.label = name
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            address = port.getHost()
            log.info(
                "{name} listening on {host}:{port}",
                name=self.label,
                host=getattr(address, "host", "?"),
                port=getattr(address, "port", "?"),
            )
            return port

        self.listening = self.endpoint.listen(self.factory).addCallback(listening)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)


class RelayService(MultiService):
    """The whole relay: upstream first, then the app listener, metrics and housekeeping.

    Stopping runs in the other order and in sequence: stop listening, let every app's
    in-flight submits be answered and unbind the apps, and only then unbind upstream.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        metrics: Metrics,
        registry: SessionRegistry,
        router: Router,
        upstream: UpstreamService,
        listener: Listener,
        simulator: Listener | None,
        tls_listener: Listener | None = None,
        password_pool: ThreadPool | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.metrics = metrics
        self.registry = registry
        self.router = router
        self.upstream = upstream
        # `listener` is the plain port, or the TLS one when there is no plain port.
        self.listener = listener
        self.tls_listener = tls_listener
        self.app_listeners = [listener] + [
            other for other in (tls_listener,) if other is not None and other is not listener
        ]
        self.simulator = simulator
        site = Site(metrics_resource(metrics, self.ready))
        self.metrics_listener = Listener(
            "metrics", tcp_server(reactor, config.metrics.host, config.metrics.port), site
        )
        pool = ThreadPoolService(password_pool, reactor) if password_pool is not None else None
        for child in (pool, simulator, upstream, *self.app_listeners, self.metrics_listener):
            if child is not None:
                child.setServiceParent(self)  # type: ignore[no-untyped-call]
        TimerService(SWEEP_INTERVAL, router.expire).setServiceParent(self)

    def ready(self) -> tuple[bool, str]:
        """Ready while an upstream session is bound and the app listener is open."""
        if any(listener.port is None for listener in self.app_listeners):
            return False, "app listener not open"
        if self.upstream.pool.bound == 0:
            return False, "no upstream session bound"
        return True, "ok"

    def startService(self) -> None:
        if self.config.clients == default_config().clients:
            log.warn(
                "no configuration given: account demo (password demo) is accepted from "
                "loopback only; use --config FILE for real accounts"
            )
        if self.config.upstream is None:
            log.info("no upstream configured: relaying to the built-in simulated SMSC")
        for client in self.config.clients:
            log.info(
                "account {account} may bind from {nets}",
                account=client.system_id,
                nets=", ".join(client.allowed_ips),
            )
        super().startService()  # type: ignore[no-untyped-call]
        # Everything built so far lives as long as the process: moving it out of the
        # collector's reach keeps full collections short (p99 at full load: ~20 ms -> ~5 ms).
        gc.freeze()

    def stopService(self) -> Deferred[None]:
        self.running = 0

        async def in_order() -> None:
            for listener in self.app_listeners:
                await maybeDeferred(listener.stopService)
            await self.registry.shutdown()
            self.router.stop()
            for service in reversed(list(self)):
                if service not in self.app_listeners and service.running:
                    await maybeDeferred(service.stopService)

        return Deferred.fromCoroutine(in_order())


class ThreadPoolService(Service):
    """Runs a thread pool while the service runs (password hashes are verified in it).

    Stopping waits for the checks queued and running to finish, so it happens in one of the
    reactor's own threads: the reactor keeps serving meanwhile, and the Deferred fires when
    the pool's threads are gone.
    """

    def __init__(self, pool: ThreadPool, reactor: Any) -> None:
        self.pool = pool
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.pool.stop)


class _LazyEndpoint:
    """Makes its endpoint at connect time: the simulator's port is known once it listens."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make

    def connect(self, factory: Any) -> Any:
        return self._make().connect(factory)


def build(
    config: Config,
    reactor: Any,
    metrics: Metrics | None = None,
    jitter: Callable[[], float] = random.random,
) -> RelayService:
    """Wire every part of the relay for ``config``."""
    metrics = metrics if metrics is not None else Metrics()
    limits = config.limits
    registry = SessionRegistry(metrics)
    router = Router(
        reactor,
        metrics,
        ReceiptRoutes(config.receipts.map_ttl, config.receipts.map_max),
        HeldDeliveries(config.receipts.hold_ttl, config.receipts.hold_max),
        {p.lstrip("+"): c.system_id for c in config.clients for p in c.mo_prefixes},
        registry.receivers,
        config.receipts.retry,
    )
    registry.on_receiver_bound.append(router.receiver_bound)

    simulator: Listener | None = None
    upstream_config = config.upstream
    if upstream_config is None:
        sim = Simulator(reactor, config.simulator.receipt_delay, config.simulator.stat)
        simulator = Listener(
            "built-in simulated SMSC",
            tcp_server(reactor, "127.0.0.1", 0),
            SimulatorFactory(sim, metrics, limits.max_pdu),
        )
        upstream_config = UpstreamConfig(
            host="127.0.0.1", port=1, system_id="smpprelay", password="sim"
        )
        listener_of_sim = simulator

        def endpoint() -> Any:
            assert listener_of_sim.port is not None
            port = listener_of_sim.port.getHost().port  # type: ignore[attr-defined]
            return TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    elif upstream_config.tls:
        secure, options = upstream_config, tls.client_options(upstream_config)
        if secure.tls_cert is not None:
            expiry = tls.expires(secure.tls_cert, "upstream.tls_cert")
            metrics.certificate_expiry.labels("upstream").set(expiry)

        def endpoint() -> Any:
            return tls.client_endpoint(reactor, secure, options)
    else:
        host, port = upstream_config.host, upstream_config.port

        def endpoint() -> Any:
            return TCP4ClientEndpoint(reactor, host, port, timeout=10)

    upstream = build_upstream(
        upstream_config,
        lambda: _LazyEndpoint(endpoint),  # type: ignore[arg-type,return-value]
        router.route,
        reactor,
        metrics,
        limits.max_pdu,
        jitter,
    )
    chain = build_chain(
        config.filters, upstream_config.system_type.strip().upper() == "ISO", metrics
    )
    relay = Relay(upstream.pool, router, metrics, reactor, chain)
    # Password hashes are checked in two threads of their own: a burst of binds cannot starve
    # the reactor's pool (name resolution) and costs at most two cores.
    password_pool = None
    if any(client.password_hash is not None for client in config.clients):
        password_pool = ThreadPool(minthreads=0, maxthreads=2, name="smpprelay-passwords")
    pool = password_pool

    def off_thread(check: Callable[[], bool]) -> Deferred[bool]:
        assert pool is not None
        return deferToThreadPool(reactor, pool, check)

    access = Access(config.security, config.clients, reactor, metrics)
    portal = make_portal(
        {client.system_id: client for client in config.clients},
        off_thread,
        access.password_checks,
    )

    def make_session() -> DownstreamSession:
        return DownstreamSession(
            portal,
            registry,
            relay.submit,
            reactor,
            metrics,
            limits.session_init,
            limits.window,
            inactivity=limits.inactivity,
            access=access,
        )

    def make_connection(session: DownstreamSession) -> SmppConnection:
        return SmppConnection(
            session,
            reactor,
            metrics,
            side="downstream",
            max_pdu=limits.max_pdu,
            response_timeout=limits.response,
            pdu_read=limits.pdu_read,
        )

    factory = DownstreamFactory(make_session, make_connection)
    listen = config.listen
    tls_listener = None
    if listen.tls is not None:
        tls_endpoint = tls.server_endpoint(reactor, listen.host, listen.tls)
        tls_listener = Listener("SMPP over TLS", tls_endpoint, factory)
        expiry = tls.expires(listen.tls.cert, "listen.tls.cert")
        metrics.certificate_expiry.labels("listen").set(expiry)
    listener = tls_listener
    if listen.port is not None:
        listener = Listener("SMPP", tcp_server(reactor, listen.host, listen.port), factory)
    assert listener is not None  # the configuration has a plain port, TLS, or both
    service = RelayService(
        config,
        reactor,
        metrics,
        registry,
        router,
        upstream,
        listener,
        simulator,
        tls_listener,
        password_pool,
    )
    TimerService(RULES_SWEEP_INTERVAL, relay.sweep).setServiceParent(service)
    return service
