"""Who an app is: the ``twisted.cred`` side of an app's bind.

`make_portal` builds the portal `DownstreamSession` logs in through. `AccountChecker` checks a
system_id and password against the configured accounts (a ``password_hash`` off the reactor
thread, and only while `Slots` has room); `AccountRealm` gives back the account's `Account`.
Whether the address may use that account, and lock-outs, are `access`'s business.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from typing_extensions import override
from zope.interface import Interface, implementer

from smpprelay.access import Slots
from smpprelay.config import Account
from smpprelay.passwd import decoy_like, verify_password

# Runs a slow check (a password hash) away from the reactor thread; fires with its result.
OffThread = Callable[[Callable[[], bool]], Deferred[bool]]


class ChecksBusy(Exception):
    """Too many password-hash checks are in flight (in all, or from this address)."""


class BindAbandoned(Exception):
    """The app hung up before its password hash was checked: the check was skipped."""


class BindCredentials(UsernamePassword):
    """An app's system_id and password, the address it binds from, and an event set once its
    connection is gone (read by the hash check in its thread, to skip work nobody awaits)."""

    def __init__(
        self, username: bytes, password: bytes, host: str, abandoned: threading.Event
    ) -> None:
        super().__init__(username, password)
        self.host = host
        self.abandoned = abandoned


def _verify_unless_abandoned(
    abandoned: threading.Event | None, hashed: str, password: bytes
) -> bool:
    # Runs in the password pool: a bind whose app already hung up costs no scrypt.
    if abandoned is not None and abandoned.is_set():
        raise BindAbandoned("the app hung up before its password was checked")
    return verify_password(hashed, password)


class IAccount(Interface):
    """The avatar of a bound app: its `Account` configuration."""


@implementer(ICredentialsChecker)
class AccountChecker:
    """Checks an app's system_id and password against the configured accounts.

    A ``password_hash`` is verified through ``off_thread`` (a thread pool), never on the
    reactor thread, and only while ``slots`` has room for the bind's address (else
    `ChecksBusy` at once, without hashing). An unknown system_id costs what a known one does:
    it is checked against a decoy hash with the parameters of the first hashed account (or
    compared like a plain password when no account has a hash).
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        clients: dict[str, Account],
        off_thread: OffThread | None = None,
        slots: Slots | None = None,
    ) -> None:
        self._clients = clients
        self._off_thread = off_thread
        self._slots = slots
        hashes = [a.password_hash for a in clients.values() if a.password_hash is not None]
        if hashes and off_thread is None:
            raise ValueError("password hashes need a thread pool to be verified in")
        self._decoy = decoy_like(hashes[0]) if hashes else None

    def reconfigure(self, clients: dict[str, Account]) -> None:
        """Check the next binds against ``clients`` (binds being checked keep what they read)."""
        hashes = [a.password_hash for a in clients.values() if a.password_hash is not None]
        if hashes and self._off_thread is None:
            raise ValueError("password hashes need a thread pool to be verified in")
        self._clients = clients
        self._decoy = decoy_like(hashes[0]) if hashes else None

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        system_id = credentials.username.decode("latin-1")
        client = self._clients.get(system_id)
        secret: bytes = credentials.password
        hashed = self._decoy if client is None else client.password_hash
        if hashed is not None:
            checked = self._check_hash(credentials, hashed, secret)
        else:
            expected = client.password if client is not None else None
            # Compare even for an unknown system_id, so the answer takes as long either way.
            plain = (expected or "\0" * 9).encode("latin-1")
            checked = succeed(hmac.compare_digest(plain, secret))

        def decide(matches: bool) -> bytes:
            if client is None:
                raise UnauthorizedLogin(f"unknown system_id {system_id!r}")
            if not matches:
                raise UnauthorizedLogin(f"wrong password for {system_id!r}")
            return credentials.username  # type: ignore[no-any-return]

        return checked.addCallback(decide)

    def _check_hash(self, credentials: Any, hashed: str, secret: bytes) -> Deferred[bool]:
        assert self._off_thread is not None
        host: str = getattr(credentials, "host", "")
        abandoned: threading.Event | None = getattr(credentials, "abandoned", None)
        slots = self._slots
        if slots is not None and not slots.take(host):
            busy = f"{slots.in_flight} password checks in flight, at most {slots.total} "
            busy += f"and {slots.per_address} per address"
            return fail(ChecksBusy(busy))
        checked = self._off_thread(partial(_verify_unless_abandoned, abandoned, hashed, secret))
        if slots is not None:

            def give_back(result: Any) -> Any:
                slots.give_back(host)  # the pool is done with it, whatever the outcome
                return result

            checked.addBoth(give_back)
        return checked


@implementer(IRealm)
class AccountRealm:
    """Gives each authenticated system_id its `Account` configuration."""

    def __init__(self, clients: dict[str, Account]) -> None:
        self._clients = clients

    def requestAvatar(self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any) -> Any:
        assert isinstance(avatarId, bytes)  # AccountChecker never gives an anonymous id
        system_id = avatarId.decode("latin-1")
        client = self._clients.get(system_id)
        if client is None:  # removed by a reload while its password was being checked
            raise UnauthorizedLogin(f"unknown system_id {system_id!r}")
        return IAccount, client, lambda: None

    def reconfigure(self, clients: dict[str, Account]) -> None:
        """Give the next binds their accounts from ``clients``."""
        self._clients = clients


def make_portal(
    clients: dict[str, Account],
    off_thread: OffThread | None = None,
    slots: Slots | None = None,
) -> Portal:
    """The cred portal that authenticates app binds (hashes verified through ``off_thread``,
    as many at once as ``slots`` allows)."""
    return Portal(AccountRealm(clients), [AccountChecker(clients, off_thread, slots)])


def reconfigure_portal(portal: Portal, clients: dict[str, Account]) -> None:
    """Make ``portal`` (from `make_portal`) check the next binds against ``clients``."""
    checker = portal.checkers[IUsernamePassword]
    realm = portal.realm
    assert isinstance(checker, AccountChecker)
    assert isinstance(realm, AccountRealm)
    checker.reconfigure(clients)
    realm.reconfigure(clients)


class ThreadPoolService(Service):
    """Runs a thread pool while the service runs (password hashes are verified in it).

    Stopping waits for the checks queued and running to finish, so it happens in one of the
    reactor's own threads: the reactor keeps serving meanwhile, and the Deferred fires when
    the pool's threads are gone.
    """

    def __init__(self, pool: ThreadPool, reactor: Any) -> None:
        self.pool = pool
        self.reactor = reactor

    @override
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.pool.start()

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.pool.stop)


def password_checks_pool(
    accounts: Sequence[Account], reactor: Any
) -> tuple[ThreadPool | None, OffThread]:
    """The threads password hashes are checked in (none when no account has a hash)."""
    # Two threads of their own: a burst of binds cannot starve the reactor's pool (name
    # resolution) and costs at most two cores.
    pool = None
    if any(account.password_hash is not None for account in accounts):
        pool = ThreadPool(minthreads=0, maxthreads=2, name="smpprelay-passwords")

    def off_thread(check: Callable[[], bool]) -> Deferred[bool]:
        assert pool is not None
        return deferToThreadPool(reactor, pool, check)

    return pool, off_thread
