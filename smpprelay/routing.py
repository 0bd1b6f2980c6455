"""Several upstreams: which operator carries a submit, and failover between them.

`UpstreamSet` stands where the relay expects one pool (`smpprelay.relay.Upstream`). A submit's
candidates are the upstreams whose ``prefixes`` match its destination (the longest matching
prefix first, upstreams with ``prefixes: []`` last) and whose ``accounts`` include its account
(or are empty). Candidates matching with the same prefix length form a group; the submit goes
to the first group with a bound session with room, shared by ``weight`` within the group (a
group that is bound but full is passed over for one with room; when none has room, the first
bound group queues it; when none is bound, the first group's queue waits for a rebind).

Which upstream carried a submit travels with its answer: the answer is a `Carried` (a bytes
whose ``upstream`` names it), and a `ResponseTimeout` becomes a `CarriedTimeout` whose late
answer is a `Carried` too, so the relay writes the route under that upstream's ids (message
ids are per upstream: two operators may both answer ``U00000001``). With a single upstream
nothing is tagged: the router's own upstream name is the one.
"""

from __future__ import annotations

import functools
import random
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from smpprelay.config import UpstreamConfig
from smpprelay.connection import Outcome, ResponseTimeout, SmppConnection, firing
from smpprelay.metrics import Metrics
from smpprelay.pool import UpstreamPool
from smpprelay.upstream import UpstreamService, UpstreamSession, build_upstream

# esm_class bit: the short_message starts with a user data header (a concatenated part).
_UDHI = 0x40
_SAR_MSG_REF_NUM = b"\x02\x0c"

log = Logger()


class Carried(bytes):
    """An operator's answer frame that knows which upstream it came from."""

    upstream: str

    def __new__(cls, frame: bytes, upstream: str) -> Carried:
        carried = super().__new__(cls, frame)
        carried.upstream = upstream
        return carried


class CarriedTimeout(ResponseTimeout):
    """A `ResponseTimeout` whose late answer, if any, comes as a `Carried`."""

    def __init__(self, original: ResponseTimeout, upstream: str) -> None:
        super().__init__(str(original))
        self.original = original
        self.upstream = upstream

    @override
    def on_late(self, callback: Callable[[bytes], None]) -> None:
        upstream = self.upstream
        self.original.on_late(lambda resp: callback(Carried(resp, upstream)))


def carrier(answer: object) -> str | None:
    """The upstream that answered (a `Carried` or `CarriedTimeout`); None: the only one."""
    name = getattr(answer, "upstream", None)
    return name if isinstance(name, str) else None


def destination_of(frame: bytes) -> tuple[bytes, bool]:
    """A submit_sm's (or data_sm's) destination_addr, and whether it is a concatenated part.

    Read straight from the frame (service_type, source, then destination are C-strings): the
    relay has parsed it already, but the `Upstream` protocol passes frames only. A frame too
    short to hold these reads as destination b"", which only the ``prefixes: []`` upstreams
    match (the operator answers for it). "Concatenated part" is a quick look (UDHI bit, or the
    bytes of the sar_msg_ref_num tag after the destination): a false positive only places the
    message by its destination instead of by chance, among the same candidates.
    """
    try:
        pos = frame.index(0, 16) + 3  # service_type, source_addr_ton, source_addr_npi
        pos = frame.index(0, pos) + 3  # source_addr, dest_addr_ton, dest_addr_npi
        end = frame.index(0, pos)
    except ValueError:
        return b"", False
    destination = frame[pos:end]
    if len(frame) <= end + 1:
        return destination, False
    long = bool(frame[end + 1] & _UDHI) or _SAR_MSG_REF_NUM in frame[end + 1 :]
    return destination, long


@attrs.define
class Member:
    """One configured upstream: its settings and its sessions and pool."""

    config: UpstreamConfig
    service: UpstreamService
    routed: Any = None  # its smpprelay_upstream_routed_total child, set by UpstreamSet

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pool(self) -> UpstreamPool:
        return self.service.pool

    def rank(self, destination: str, account: str) -> int | None:
        """Its group for this submit (higher goes first), or None when it is no candidate."""
        config = self.config
        if config.accounts and account not in config.accounts:
            return None
        if not config.prefixes:
            return -1
        matching = (
            len(p.lstrip("+")) for p in config.prefixes if destination.startswith(p.lstrip("+"))
        )
        return max(matching, default=None)


def route_free(config: UpstreamConfig) -> UpstreamConfig:
    """``config`` without what decides its traffic: what a reload can change live."""
    return attrs.evolve(config, prefixes=(), accounts=(), weight=1)


class UpstreamSet(MultiService):
    """Every upstream; routes each submit to one of them (`smpprelay.relay.Upstream`)."""

    def __init__(
        self,
        members: Sequence[Member],
        metrics: Metrics,
        choose: Callable[[], float] = random.random,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.members = list(members)
        self.by_name = {member.name: member for member in self.members}
        self._only: Member | None = None
        self._shortcut()
        self.metrics = metrics
        self._choose = choose
        # Makes a new upstream's sessions and pool (`build_upstreams` sets it): without it a
        # reload changes routes only.
        self.make_member: Callable[[UpstreamConfig], Member] | None = None
        self._metrics_for_members()
        for member in self.members:
            member.service.setServiceParent(self)  # type: ignore[no-untyped-call]

    def _metrics_for_members(self) -> None:
        metrics = self.metrics
        if len(self.members) > 1:
            # Each pool sets these for itself: with several, they are read as their sum.
            metrics.upstream_queue.set_function(self._queued)
            metrics.upstream_pace.set_function(self._pace)
        for member in self.members:
            member.routed = metrics.upstream_routed.labels(member.name)
            for other in self.members:
                # Every pair shown from the start (a graph of zeros beats no graph); with a
                # single upstream its one pair with itself, which never counts.
                if other is not member or len(self.members) == 1:
                    metrics.upstream_failovers.labels(member.name, other.name)

    def reconfigure(self, configs: Sequence[UpstreamConfig]) -> list[str]:
        """Apply reloaded upstreams without a restart; return the names it could not (all but
        route changes when there is no `make_member`).

        Routes (``prefixes``, ``accounts``, ``weight``) apply at once and no session is
        touched. An upstream added is started; one removed takes no new submit and is drained
        and unbound (its sessions answer what is in flight before they unbind); one whose other
        settings changed is replaced: the new one connects and binds at once (until then its
        submits wait in its queue) while the old one drains.
        """
        make = self.make_member
        if make is None:
            return self.reroute(configs)
        wanted = {config.name: config for config in configs}
        for name in [name for name in self.by_name if name not in wanted]:
            self._retire(self.by_name.pop(name), "removed")
        for config in configs:
            member = self.by_name.get(config.name)
            if member is not None and route_free(config) == route_free(member.config):
                member.config = config
                continue
            if member is not None:
                self._retire(member, "changed")
            member = self.by_name[config.name] = make(config)
            member.service.setServiceParent(self)  # type: ignore[no-untyped-call]
            log.info("upstream {name}: started by a reload", name=config.name)
        self.members = [self.by_name[config.name] for config in configs]
        self._metrics_for_members()
        self._shortcut()
        return []

    def _retire(self, member: Member, why: str) -> None:
        """Take ``member`` out of routing, then drain and unbind it."""
        if member in self.members:
            self.members.remove(member)
        name = member.name
        stopped = member.service.disownServiceParent()  # type: ignore[no-untyped-call]

        def done(result: object) -> None:
            log.info("upstream {name} ({why} by a reload): drained and unbound", name=name, why=why)

        if isinstance(stopped, Deferred):
            stopped.addBoth(done)

    def _shortcut(self) -> None:
        # One upstream that serves every destination and account: no routing to do.
        only = self.members[0] if len(self.members) == 1 else None
        self._only = only if only and not (only.config.prefixes or only.config.accounts) else None

    def reroute(self, configs: Sequence[UpstreamConfig]) -> list[str]:
        """Take the reloaded upstreams' ``prefixes``, ``accounts`` and ``weight`` at once (no
        session is touched); return the names of those a restart must apply: added, removed,
        or with other settings changed (their running settings and routes stay)."""
        new = {config.name: config for config in configs}
        later = sorted(set(self.by_name) ^ set(new))
        for name, member in self.by_name.items():
            config = new.get(name)
            if config is None:
                continue
            if route_free(config) != route_free(member.config):
                later.append(name)
                continue
            member.config = config
        self._shortcut()
        return later

    # --- what the relay service and the tests read ------------------------------------------

    @property
    def pool(self) -> UpstreamSet:
        """Itself: it stands where the single upstream's pool stood."""
        return self

    @property
    def sessions(self) -> list[UpstreamSession]:
        return [session for member in self.members for session in member.service.sessions]

    @property
    def bound(self) -> int:
        """Sessions bound now, over every upstream."""
        return sum(member.pool.bound for member in self.members)

    @property
    def transmitters(self) -> list[SmppConnection]:
        return [c for member in self.members for c in member.pool.transmitters]

    @property
    def receivers(self) -> list[SmppConnection]:
        return [c for member in self.members for c in member.pool.receivers]

    def _queued(self) -> float:
        return float(sum(member.pool.queued for member in self.members))

    def _pace(self) -> float:
        paces = (member.pool.pace for member in self.members)
        return sum(pace.now() for pace in paces if pace is not None)

    # --- routing ----------------------------------------------------------------------------

    def pick(self, frame: bytes, account: str) -> Member | None:
        """The upstream for this submit (see the module docstring); None: no candidate."""
        members = self.members
        if self._only is not None:
            return self._only
        raw, long = destination_of(frame)
        destination = raw.decode("latin-1").lstrip("+")
        groups: dict[int, list[Member]] = {}
        for member in members:
            rank = member.rank(destination, account)
            if rank is not None:
                groups.setdefault(rank, []).append(member)
        if not groups:
            return None
        ordered = [groups[rank] for rank in sorted(groups, reverse=True)]
        # A long message's parts go one way: chosen by their destination, not by chance.
        key = zlib.crc32(f"{account}\0{destination}".encode()) / 2**32 if long else None
        chosen = self._first(ordered, lambda m: m.pool.has_room, key)
        if chosen is None:
            chosen = self._first(ordered, lambda m: bool(m.pool.transmitters), key)
        if chosen is None:
            return self._weighted(ordered[0], key)
        preferred = ordered[0]
        if chosen not in preferred and not any(m.pool.transmitters for m in preferred):
            # The preferred upstream has no bound session: traffic fails over.
            self.metrics.upstream_failovers.labels(preferred[0].name, chosen.name).inc()
        return chosen

    def _first(
        self,
        ordered: list[list[Member]],
        usable: Callable[[Member], bool],
        key: float | None,
    ) -> Member | None:
        for group in ordered:
            ready = [member for member in group if usable(member)]
            if ready:
                return self._weighted(ready, key)
        return None

    def _weighted(self, group: list[Member], key: float | None) -> Member:
        if len(group) == 1:
            return group[0]
        total = sum(member.config.weight for member in group)
        point = (self._choose() if key is None else key) * total
        for member in group:
            point -= member.config.weight
            if point < 0:
                return member
        return group[-1]

    # --- the relay's Upstream protocol --------------------------------------------------------

    def submit(self, frame: bytes, account: str = "") -> Deferred[bytes]:
        """Send a submit upstream on the upstream `pick` chooses."""
        sent: Deferred[bytes] = Deferred()
        self.submit_cb(frame, account, firing(sent))
        return sent

    def submit_cb(self, frame: bytes, account: str, outcome: Outcome) -> None:
        """`submit` for the hot path: ``outcome`` gets the answer (tagged with the upstream
        that carried it when there are several) or the failure."""
        member = self._only  # `pick`'s first test, inline: most relays have one upstream
        if member is not None:
            member.routed.value += 1  # a `PlainCount`: its `inc`, inline
            member.service.pool.submit_cb(frame, account, outcome)
            return
        member = self.pick(frame, account)
        if member is None:
            outcome(Failure(NoRoute(f"no upstream takes this submit from {account!r}")))
            return
        member.routed.inc()
        if len(self.members) == 1:
            member.pool.submit_cb(frame, account, outcome)
            return
        name = member.name

        def carried(result: bytes | Failure) -> None:
            if isinstance(result, Failure):
                outcome(_carried_failure(result, name))
            else:
                outcome(Carried(result, name))

        member.pool.submit_cb(frame, account, carried)

    def submit_all(self, frames: list[bytes], account: str = "") -> Deferred[list[bytes | Failure]]:
        """Send a long message's parts, in order, on one session of one upstream."""
        member = self.pick(frames[0], account)
        if member is None:
            refused: Deferred[list[bytes | Failure]] = _no_route(account).addCallbacks(
                lambda _: [], lambda reason: [reason] * len(frames)
            )
            return refused
        member.routed.inc(len(frames))
        sent = member.pool.submit_all(frames, account)
        if len(self.members) == 1:
            return sent
        name = member.name

        def tag(results: list[bytes | Failure]) -> list[bytes | Failure]:
            return [
                Carried(r, name) if isinstance(r, bytes) else _carried_failure(r, name)
                for r in results
            ]

        return sent.addCallback(tag)

    def submit_to(self, upstream: str, frame: bytes, account: str = "") -> Deferred[bytes]:
        """Send a request (query_sm, cancel_sm, replace_sm) to the named upstream.

        An upstream that is not configured (any more) gets the first one's: the only case is
        a route written under "default" before ``upstream:`` became ``upstreams:``.
        """
        member = self.by_name.get(upstream, self.members[0])
        return member.pool.submit(frame, account)

    def stop(self) -> None:
        for member in self.members:
            member.pool.stop()


class NoRoute(Exception):
    """No configured upstream takes this submit (its destination or account)."""


def _no_route(account: str) -> Deferred[bytes]:
    return fail(NoRoute(f"no upstream takes this submit from {account!r}"))


def _carried_failure(reason: Failure, upstream: str) -> Failure:
    if isinstance(reason.value, ResponseTimeout) and not isinstance(reason.value, CarriedTimeout):
        return Failure(CarriedTimeout(reason.value, upstream))
    return reason


def build_upstreams(
    configs: Sequence[tuple[UpstreamConfig, Callable[[], IStreamClientEndpoint]]],
    route: Callable[..., Deferred[int]],
    clock: IReactorTime,
    metrics: Metrics,
    max_pdu: int,
    jitter: Callable[[], float] = random.random,
    parts_within: float = 60.0,
    endpoint_for: Callable[[UpstreamConfig], Callable[[], IStreamClientEndpoint]] | None = None,
) -> UpstreamSet:
    """Every upstream's sessions and pool (`build_upstream`) behind one `UpstreamSet`.

    ``route`` is the router's (`smpprelay.router.Router.route`): each upstream's deliver_sm
    are routed under its own name, so a receipt finds the route its submit's answer wrote.
    """

    def member(config: UpstreamConfig, endpoint: Callable[[], IStreamClientEndpoint]) -> Member:
        service = build_upstream(
            config,
            endpoint,
            functools.partial(route, upstream=config.name),
            clock,
            metrics,
            max_pdu,
            jitter,
            parts_within,
        )
        return Member(config, service)

    upstreams = UpstreamSet([member(config, endpoint) for config, endpoint in configs], metrics)
    if endpoint_for is not None:
        make = endpoint_for
        upstreams.make_member = lambda config: member(config, make(config))
    return upstreams
