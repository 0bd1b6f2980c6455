"""The bind side of an app session: the bind itself (through a ``twisted.cred`` portal, see
`smpprelay.auth`), its refusals and what they count toward lock-outs, the session_init timer,
and dropping connections that have not bound.

Apart from `smpprelay.downstream` so that the submit path reads on its own; this is the
session's part before it is bound, and none of it runs per submit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from smpprelay import pdu
from smpprelay.access import LOCKOUT_REASONS, Access, OpenAccess, address_allowed
from smpprelay.auth import BindAbandoned, BindCredentials, ChecksBusy, IAccount
from smpprelay.config import Account
from smpprelay.connection import SmppConnection
from smpprelay.metrics import Metrics
from smpprelay.pdu import CommandId, DecodeError, Status
from smpprelay.registry import Registry
from smpprelay.session_states import STATE_OF_KIND, UNBOUND, State

# What we call ourselves in bind responses.
SYSTEM_ID = "smpprelay"


class Binding:
    """The bind side of `smpprelay.downstream.DownstreamSession` (a mixin: the session holds
    the state it reads and writes)."""

    log = Logger()
    portal: Portal
    access: Access | OpenAccess
    registry: Registry[Any]
    metrics: Metrics
    host: str
    state: State
    account: str
    bind_kind: str
    app_iso: bool
    inactivity: float
    session_init: float
    connection: SmppConnection | None
    _peer_address: IAddress | None
    _admitted: bool
    _holds_unbound: bool
    _init_timer: IDelayedCall | None
    _abandoned: threading.Event

    def _idle(self) -> None:
        """Nothing from the app for ``inactivity`` seconds (the session unbinds it)."""
        raise NotImplementedError

    def _resumed(self) -> None:
        """The app reads again (the session tells the registry)."""
        raise NotImplementedError

    def _bind(
        self, connection: SmppConnection, command_id: int, sequence: int, frame: bytes
    ) -> None:
        kind = pdu.BIND_KINDS[CommandId(command_id)]
        if self.access.locked(self.host):
            # Connected before the lock-out began: refused like a bind that failed (not counted).
            self._bind_failed(connection, kind, sequence, "locked_out", "address locked out")
            return
        try:
            request = pdu.read_bind(frame)
        except DecodeError as error:
            self._bind_failed(connection, kind, sequence, "malformed", str(error))
            return
        self.state = State.BINDING
        credentials = BindCredentials(
            request.system_id.encode("latin-1"),
            request.password.encode("latin-1"),
            self.host,
            self._abandoned,
        )

        def authenticated(result: tuple[Any, Account, Callable[[], None]]) -> None:
            client = result[1]
            if not address_allowed(self._peer_address, client.allowed_ips):
                self._bind_failed(
                    connection, kind, sequence, "address_not_allowed", f"{client.system_id}"
                )
                return
            if self.state is not State.BINDING:
                return  # the app went away meanwhile, with the right password: nothing to count
            if self.access.locked(self.host):
                # Locked out while the password was checked: a right password changes nothing.
                self._bind_failed(connection, kind, sequence, "locked_out", client.system_id)
                return
            binds = self.registry.bound_count(client.system_id)
            if client.max_binds is not None and binds >= client.max_binds:
                detail = f"{client.system_id} already has {binds} of max_binds {client.max_binds}"
                self._bind_failed(connection, kind, sequence, "max_binds", detail)
                return
            self.app_iso = request.system_type.strip().upper() == "ISO"
            self._bound(connection, kind, sequence, client)

        def refused(reason: Failure) -> None:
            # Counted even when the app hung up meanwhile: only the answer needs the session.
            why = "credentials"
            if reason.check(ChecksBusy):
                why = "busy"
            elif reason.check(BindAbandoned):
                why = "abandoned"
            self._bind_failed(connection, kind, sequence, why, reason.getErrorMessage())

        login = self.portal.login(credentials, None, IAccount)
        self.access.checked(self.host, login).addCallbacks(authenticated, refused)

    def _leave_unbound(self) -> None:
        # The connection bound or went: its slot among the unbound ones is free.
        if self._holds_unbound:
            self._holds_unbound = False
            self.access.left_unbound(self.host)

    def _bound(self, connection: SmppConnection, kind: str, sequence: int, client: Account) -> None:
        if self._init_timer is not None and self._init_timer.active():
            self._init_timer.cancel()
        self._leave_unbound()
        self.state = STATE_OF_KIND[kind]
        self.account = client.system_id
        self.bind_kind = kind
        connection.send(pdu.bind_response(kind, sequence, Status.ESME_ROK, SYSTEM_ID))
        connection.start_inactivity(self.inactivity, self._idle)
        connection.when_resumed = self._resumed
        self.metrics.bind_attempts.labels("ok").inc()
        self.log.info(
            "{account} bound as {kind} from {peer}",
            account=self.account,
            kind=kind,
            peer=connection.peer,
        )
        self.registry.bound(self)

    def _bind_failed(
        self, connection: SmppConnection, kind: str, sequence: int, reason: str, detail: str
    ) -> None:
        # One answer for every failure, so a prober learns nothing about which accounts exist;
        # the real reason goes to the log only (never the password). A failure found after the
        # app hung up (or was dropped) is counted all the same, with no one left to answer.
        answer = self.state in UNBOUND and not connection.closed
        if answer:
            self.state = State.OPEN
        self.log.warn(
            "bind refused from {peer}: {reason} ({detail}){gone}",
            peer=connection.peer,
            reason=reason,
            detail=detail,
            gone="" if answer else ", after the app hung up",
        )
        self.metrics.bind_attempts.labels(reason).inc()
        if answer:
            connection.send(pdu.bind_response(kind, sequence, Status.ESME_RBINDFAIL, SYSTEM_ID))
            connection.close()
        if reason in LOCKOUT_REASONS and self.access.bind_failed(self.host):
            self._drop_unbound_from(self.host)

    def _drop_unbound_from(self, host: str) -> None:
        # ``host`` was just locked out: its connections that have not bound yet go at once
        # (bound sessions carry on, as at accept).
        for session in list(self.registry.connections):
            if session is not self and session.host == host and session.state in UNBOUND:
                session.drop("address locked out")

    def drop(self, why: str) -> None:
        """Abort this (not yet bound) connection now, without an answer."""
        self._abandoned.set()
        # Its slots are free at once: the connection pushing it out takes them now, not when
        # the transport reports the loss.
        self._leave_unbound()
        if self._admitted:
            self._admitted = False
            self.access.closed(self.host)
        connection = self.connection
        if connection is not None and not connection.closed:
            self.log.info("{peer}: dropped, {why}", peer=connection.peer, why=why)
            connection.abort()

    def _init_expired(self) -> None:
        self._init_timer = None
        connection = self.connection
        # A connection already closing (a refused bind) has had its answer and its count.
        if connection is not None and not connection.closed and self.state in UNBOUND:
            self.log.info(
                "{peer}: no bind within {s} s; closing",
                peer=connection.peer,
                s=self.session_init,
            )
            self.metrics.session_timeouts.labels("downstream", "session_init").inc()
            connection.close()
            # Holding a connection without binding counts toward the address's lock-out like
            # a failed bind: otherwise idle connections cost an attacker nothing.
            if self.access.bind_failed(self.host):
                self._drop_unbound_from(self.host)
