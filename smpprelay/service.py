"""``build(config, reactor) -> RelayService``: the only place that knows every part."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site
from typing_extensions import override
from zope.interface import implementer

from smpprelay import tls
from smpprelay.access import Access
from smpprelay.auth import ThreadPoolService, make_portal, password_checks_pool
from smpprelay.config import Config, UpstreamConfig, default_config
from smpprelay.connection import SmppConnection
from smpprelay.downstream import DownstreamFactory, DownstreamSession, SessionRegistry
from smpprelay.filters import build_chain
from smpprelay.filters.base import FilterChain
from smpprelay.handover import share_through_redis
from smpprelay.listeners import (
    TLS_LISTENER,
    Endpoints,
    Listener,
    ListenFailed,
    app_listeners,
    tcp_server,
)
from smpprelay.metrics import Metrics, metrics_resource
from smpprelay.operations import Operations
from smpprelay.redis_url import parse_url
from smpprelay.relay import Relay
from smpprelay.reload import LiveParts
from smpprelay.router import Router
from smpprelay.routing import UpstreamSet, build_upstreams
from smpprelay.shared.chain import SharedChain, build_shared_chain
from smpprelay.simulator import Simulator, SimulatorFactory
from smpprelay.state import StoreService, open_store
from smpprelay.store import Loaded, Store
from smpprelay.store.redis import RedisStore
from smpprelay.store.tables import HeldDeliveries

# Listener, ListenFailed and tcp_server are imported from here by the simulator and the tests.
__all__ = ["ListenFailed", "Listener", "RelayService", "build", "tcp_server"]

log = Logger()

# How often expired receipt routes and held deliveries are swept.
SWEEP_INTERVAL = 10.0
# How often the rules' windows are swept: held parts get their EXPIRED receipt this late at most.
RULES_SWEEP_INTERVAL = 1.0
# How often the rules' newest window entries are written behind: small and often, so that
# packing them never holds the interpreter long enough to show in the submits' latency.
WRITE_BEHIND_INTERVAL = 0.1


class RelayService(MultiService):
    """The whole relay; `build` makes and adds its parts, this service orders start and stop.

    Children start in the order `build` adds them: the password pool, the simulated SMSC,
    upstream, the app listeners, metrics, the sweeps. Stopping runs in sequence: stop
    listening, answer the held concatenated parts, let every app's in-flight submits be
    answered and unbind the apps, flush the router, and then stop the rest in reverse order
    (so upstream unbinds last but for the simulator and the password pool).
    """

    live: LiveParts  # set by `build`: what a reload (smpprelay.reload) reconfigures

    def __init__(
        self,
        config: Config,
        registry: SessionRegistry,
        router: Router,
        relay: Relay,
        upstream: UpstreamSet,
        app_listeners: Sequence[Listener],
        metrics_listener: Listener,
        simulator: Listener | None,
        clock: IReactorTime,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.clock = clock
        # False once a stop had to cut something off (see limits.shutdown_timeout).
        self.stopped_cleanly = True
        self.metrics = relay.metrics
        self.registry = registry
        self.router = router
        self.relay = relay
        self.upstream = upstream
        # The first is the plain port, or the TLS one when there is no plain port.
        self.app_listeners = list(app_listeners)
        self.listener = self.app_listeners[0]
        self.tls_listener = next(
            (each for each in self.app_listeners if each.label == TLS_LISTENER), None
        )
        self.metrics_listener = metrics_listener
        self.simulator = simulator

    def ready(self) -> tuple[bool, str]:
        """Ready while an upstream session is bound, the app listener is open and the store
        can write."""
        if any(listener.port is None for listener in self.app_listeners):
            return False, "app listener not open"
        if not self.relay.store.writable:
            return False, f"store cannot write: {self.relay.store.problem}"
        if self.upstream.pool.bound == 0:
            return False, "no upstream session bound"
        return True, "ok"

    @override
    def startService(self) -> None:
        if self.config.clients == default_config().clients:
            log.warn(
                "no configuration given: account demo (password demo) is accepted from "
                "loopback only; use --config FILE for real accounts"
            )
        if not self.config.operators:
            log.info("no upstream configured: relaying to the built-in simulated SMSC")
        for client in self.config.clients:
            log.info(
                "account {account} may bind from {nets}",
                account=client.system_id,
                nets=", ".join(client.allowed_ips),
            )
        super().startService()  # type: ignore[no-untyped-call]

    @override
    def stopService(self) -> Deferred[None]:
        self.running = 0
        timeout = self.config.limits.shutdown_timeout
        deadline = self.clock.seconds() + timeout
        # The apps get all but the last third (5 s at most) of the time: what is left is for
        # unbinding from the operator cleanly, even after apps had to be cut off.
        apps_deadline = deadline - min(5.0, timeout / 3)

        async def in_order() -> None:
            for listener in self.app_listeners:
                await maybeDeferred(listener.stopService)
            log.info("stopping: no new apps; unbinding the bound ones")
            self.relay.drop_held()
            if not await self._within(self.registry.shutdown(), apps_deadline):
                self.stopped_cleanly = False
                self._cut_off_apps()
            self.router.stop()
            for service in reversed(list(self)):
                if service in self.app_listeners or not service.running:
                    continue
                if not await self._within(maybeDeferred(service.stopService), deadline):
                    self.stopped_cleanly = False
                    log.warn("stopping: {service} did not stop in time", service=service)
            if self.stopped_cleanly:
                log.info("stopped cleanly")

        return Deferred.fromCoroutine(in_order())

    def _within(self, stage: Deferred[Any], deadline: float) -> Deferred[bool]:
        """Fires True when ``stage`` is done, or False at ``deadline`` if it is not."""
        done: Deferred[bool] = Deferred()
        timer = self.clock.callLater(
            max(0.0, deadline - self.clock.seconds()),
            lambda: None if done.called else done.callback(False),
        )

        def finished(result: object) -> None:
            if isinstance(result, Failure):
                # The stop goes on either way; the failure is not swallowed unseen.
                log.failure("stopping: a stage failed", result)
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(True)

        stage.addBoth(finished)
        return done

    def _cut_off_apps(self) -> None:
        """limits.shutdown_timeout has passed: close every app connection still open."""
        sessions = [
            session
            for session in self.registry.connections
            if session.connection is not None and not session.connection.closed
        ]
        log.warn(
            "stopping: {n} app connection(s) still open after limits.shutdown_timeout "
            "({timeout} s); closing them",
            n=len(sessions),
            timeout=self.config.limits.shutdown_timeout,
        )
        for session in sessions:
            assert session.connection is not None
            session.connection.abort()


@implementer(IStreamClientEndpoint)
class _LazyEndpoint:
    """Makes its endpoint at connect time: the simulator's port is known once it listens."""

    def __init__(self, make: Callable[[], IStreamClientEndpoint]) -> None:
        self._make = make

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return self._make().connect(factory)


def _router(
    config: Config, reactor: Any, metrics: Metrics, registry: SessionRegistry, store: Store
) -> Router:
    router = Router(
        reactor,
        metrics,
        store,
        HeldDeliveries(config.receipts.hold_ttl, config.receipts.hold_max),
        {p.lstrip("+"): c.system_id for c in config.clients for p in c.mo_prefixes},
        registry.receivers,
        config.receipts.retry,
        second_look=config.receipts.second_look,
        message_id_format=(config.operators or (_SIMULATED,))[0].message_id_format,
        map_max=config.store.map_max(config.receipts),
        upstream=(config.operators or (_SIMULATED,))[0].name,
        id_formats={each.name: each.message_id_format for each in config.operators},
    )
    registry.on_receiver_bound.append(router.receiver_bound)
    registry.on_stopping.append(router.stopping)
    return router


# The built-in simulated SMSC's settings (its address is found when it listens).
_SIMULATED = UpstreamConfig(host="127.0.0.1", port=1, system_id="smpprelay", password="sim")


def _operator(
    config: Config, upstream: UpstreamConfig | None, reactor: Any, metrics: Metrics
) -> tuple[UpstreamConfig, Callable[[], IStreamClientEndpoint], Listener | None]:
    """Where upstream connects: the configured operator, or a built-in simulated SMSC.

    Returns the upstream settings, a maker of the endpoint to connect to, and the simulator's
    listener when there is one.
    """
    if upstream is None:
        sim = Simulator(
            reactor,
            config.simulator.receipt_delay,
            config.simulator.stat,
            throughput=config.simulator.throughput,
        )
        simulator = Listener(
            "built-in simulated SMSC",
            tcp_server(reactor, "127.0.0.1", 0),
            SimulatorFactory(sim, metrics, config.limits.max_pdu),
        )

        def to_simulator() -> IStreamClientEndpoint:
            assert simulator.port is not None
            port = simulator.port.getHost().port  # type: ignore[attr-defined]
            return TCP4ClientEndpoint(reactor, "127.0.0.1", port)

        return _SIMULATED, to_simulator, simulator
    if upstream.tls:
        options = tls.client_options(upstream)
        if upstream.tls_cert is not None:
            expiry = tls.expires(upstream.tls_cert, "upstream.tls_cert")
            # One series per upstream: "upstream" for the only one, as before.
            label = "upstream" if upstream.name == "default" else f"upstream/{upstream.name}"
            metrics.certificate_expiry.labels(label).set(expiry)
        secure = upstream
        return upstream, lambda: tls.client_endpoint(reactor, secure, options), None
    host, port = upstream.host, upstream.port
    # A name resolves to IPv4 and IPv6 addresses, tried as RFC 8305 says (happy eyeballs).
    return upstream, lambda: HostnameEndpoint(reactor, host, port, timeout=10), None


def _store_at(config: Config) -> str:
    """Where the store is, for the log (a Redis URL without its password)."""
    if config.store.backend != "redis":
        return config.store.path
    url = parse_url(config.store.url)
    return f"{'rediss' if url.tls else 'redis'}://{url.host}:{url.port}/{url.db}"


def _restore(config: Config, loaded: Loaded, router: Router, relay: Relay, now: float) -> None:
    """Put back what the store kept from the last run, before any app can bind."""
    deliveries = router.restore(loaded.deliveries)
    windows, parts = relay.restore(loaded, now)
    if config.store.backend != "memory":
        log.info(
            "store {path}: {routes} receipt routes pending; {deliveries} held deliveries, "
            "{parts} held parts and {windows} rule window entries put back",
            path=_store_at(config),
            routes=loaded.routes,
            deliveries=deliveries,
            parts=parts,
            windows=windows,
        )


def _timer(interval: float, call: Callable[[], object], reactor: Any) -> TimerService:
    timer = TimerService(interval, call)
    timer.clock = reactor  # the injected reactor, never the global one
    return timer


def build(
    config: Config,
    reactor: Any,
    metrics: Metrics | None = None,
    jitter: Callable[[], float] = random.random,
    app_endpoints: Endpoints | None = None,
) -> RelayService:
    """Wire every part of the relay for ``config``."""
    vendor_statuses = tuple(s for each in config.operators for s in each.vendor_statuses)
    metrics = metrics if metrics is not None else Metrics(vendor_statuses=vendor_statuses)
    limits = config.limits
    registry = SessionRegistry(metrics)
    store = open_store(config, reactor)
    router = _router(config, reactor, metrics, registry, store)
    operators = [_operator(config, each, reactor, metrics) for each in config.operators or [None]]
    upstream_config, _, simulator = operators[0]
    endpoints = [(each, functools.partial(_LazyEndpoint, make)) for each, make, _ in operators]

    def endpoint_for(added: UpstreamConfig) -> Callable[[], IStreamClientEndpoint]:
        """A reloaded upstream's endpoint maker (a simulated SMSC is never added by a reload)."""
        return functools.partial(_LazyEndpoint, _operator(config, added, reactor, metrics)[1])

    upstream = build_upstreams(
        endpoints,
        router.route,
        reactor,
        metrics,
        limits.max_pdu,
        jitter,
        config.filters.concat.window,
        endpoint_for if config.operators else None,
    )
    upstream_iso = upstream_config.system_type.strip().upper() == "ISO"
    chain: FilterChain | SharedChain
    if isinstance(store, RedisStore):
        # Several instances decide as one: the rules' state is in Redis (smpprelay.shared).
        chain = build_shared_chain(config, upstream_iso, metrics, store)
    else:
        secret = store.secret if store.durable else None
        chain = build_chain(config.filters, upstream_iso, metrics, secret)
    relay = Relay(upstream.pool, router, metrics, reactor, chain, limits.max_tlvs, store)
    operations = Operations(relay, router, metrics, reactor)
    _restore(config, store.load(), router, relay, reactor.seconds())
    password_pool, off_thread = password_checks_pool(config.clients, reactor)
    access = Access(config.security, config.clients, reactor, metrics)
    handover = (
        share_through_redis(store, router, registry, access, config, reactor, metrics)
        if isinstance(store, RedisStore)
        else None
    )
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
            operate=operations.handle,
            relay_submit_cb=relay.submit_cb,
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
    apps = app_listeners(config, reactor, metrics, factory, app_endpoints or {})
    metrics_listener = Listener(
        "metrics",
        tcp_server(reactor, config.metrics.host, config.metrics.port),
        Site(metrics_resource(metrics, lambda: service.ready())),
    )
    service = RelayService(
        config,
        registry,
        router,
        relay,
        upstream,
        apps,
        metrics_listener,
        simulator,
        reactor,
    )
    # A reload reconfigures the rules, in-process or shared (their values; what runs stays).
    service.live = LiveParts(
        access, portal, router, registry, relay.chain, bool(password_pool), upstream
    )
    children: list[IService | None] = [
        # First to start, last to stop: everything else may write to it until it stops.
        StoreService(store, relay.write_behind, metrics),
        ThreadPoolService(password_pool, reactor) if password_pool is not None else None,
        simulator,
        upstream,
        *apps,
        metrics_listener,
        handover,
        _timer(SWEEP_INTERVAL, router.expire, reactor),
        _timer(RULES_SWEEP_INTERVAL, relay.sweep, reactor),
        _timer(WRITE_BEHIND_INTERVAL, relay.write_behind, reactor) if store.durable else None,
        _timer(RULES_SWEEP_INTERVAL, lambda: store.expire(reactor.seconds()), reactor),
    ]
    for child in children:
        if child is not None:
            child.setServiceParent(service)
    return service
