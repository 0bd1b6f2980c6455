"""Salted scrypt hashes for app passwords, and ``smpprelay-passwd`` which makes them.

A hash reads ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (salt and key in unpadded base64), so the
parameters travel with it and can be raised later without breaking existing hashes. Verifying
one costs tens of milliseconds of CPU: the relay does it off the reactor thread.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import sys
from typing import NamedTuple

# 2**15 x 8 x 1: 32 MiB and ~70 ms per check on the development machine. SMPP passwords are
# at most 8 characters, so the hash only slows an offline attack down; lock-outs and
# allowed_ips carry the real weight against online guessing.
DEFAULT_N = 2**15
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# A hash from the configuration may not ask for more than this (memory is 128 * n * r bytes).
MAX_MEMORY = 256 * 1024 * 1024


class ScryptHash(NamedTuple):
    """A parsed ``scrypt$...`` string."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def check_parameters(n: int, r: int, p: int) -> None:
    """ValueError unless n, r, p are valid scrypt parameters within `MAX_MEMORY`."""
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError("scrypt hash: n must be a power of 2 above 1, r and p at least 1")
    if 128 * r * (n + p) > MAX_MEMORY:
        raise ValueError(f"scrypt hash: n, r, p need more than {MAX_MEMORY >> 20} MiB")


def parse_hash(text: str) -> ScryptHash:
    """Read a ``scrypt$n$r$p$salt$key`` string; ValueError says what is wrong with it."""
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError(
            "expected scrypt$<n>$<r>$<p>$<salt>$<key> (make one with smpprelay-passwd)"
        )
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise ValueError("scrypt hash: n, r, p must be integers and salt, key base64") from None
    check_parameters(n, r, p)
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("scrypt hash: salt or key too short")
    return ScryptHash(n, r, p, salt, key)


def _derive(password: bytes, n: int, r: int, p: int, salt: bytes, length: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=128 * r * (n + p) + (1 << 20), dklen=length
    )


def make_hash(
    password: str, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P, salt: bytes = b""
) -> str:
    """A new ``scrypt$...`` hash of ``password`` with a random salt (unless one is given).

    The parameters are checked first: ValueError before any memory is asked for."""
    check_parameters(n, r, p)
    salt = salt or os.urandom(SALT_BYTES)
    key = _derive(password.encode("latin-1"), n, r, p, salt, KEY_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(hashed: str, password: bytes) -> bool:
    """True when ``password`` matches ``hashed``; slow by design, so never on the reactor."""
    h = parse_hash(hashed)
    return hmac.compare_digest(_derive(password, h.n, h.r, h.p, h.salt, len(h.key)), h.key)


def decoy_like(hashed: str) -> str:
    """A hash no password matches that costs as much to check as ``hashed``."""
    h = parse_hash(hashed)
    return f"scrypt${h.n}${h.r}${h.p}${_b64(bytes(len(h.salt)))}${_b64(bytes(len(h.key)))}"


def _password_problem(password: str) -> str | None:
    if not 1 <= len(password) <= 8:
        return "an SMPP password is 1 to 8 characters"
    if not (password.isascii() and password.isprintable()):
        return "an SMPP password is printable ASCII"
    return None


def main(argv: list[str] | None = None) -> int:
    """``smpprelay-passwd``: read a password (twice on a terminal) and print its hash."""
    parser = argparse.ArgumentParser(
        prog="smpprelay-passwd",
        description="Print a password_hash for the relay's clients configuration. "
        "Reads the password from the terminal (asked twice, not echoed) or one line of stdin.",
    )
    parser.add_argument(
        "-n", type=int, default=DEFAULT_N, help=f"scrypt cost (default {DEFAULT_N})"
    )
    args = parser.parse_args(argv)
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("smpprelay-passwd: the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    problem = _password_problem(password)
    if problem is not None:
        print(f"smpprelay-passwd: {problem}", file=sys.stderr)
        return 1
    try:
        hashed = make_hash(password, n=args.n)
    except ValueError as error:
        print(f"smpprelay-passwd: {error}", file=sys.stderr)
        return 1
    print(hashed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
