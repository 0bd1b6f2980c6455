"""Password hashes: the format, verification, and the smpprelay-passwd command."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import time

import pytest

from smpprelay import passwd
from smpprelay.passwd import decoy_like, make_hash, parse_hash, verify_password

FAST = 16  # a cheap n: the format, not the cost, is under test


def test_hash_round_trip_and_salt() -> None:
    """A hash verifies its password only, and two hashes of one password differ (salt)."""
    first, second = make_hash("s3cret", n=FAST), make_hash("s3cret", n=FAST)
    assert first != second
    assert first.startswith("scrypt$16$8$1$")
    assert verify_password(first, b"s3cret")
    assert verify_password(second, b"s3cret")
    assert not verify_password(first, b"s3cret!")
    assert not verify_password(first, b"")


def test_format_is_documented_scrypt() -> None:
    """A hash built by hand from hashlib.scrypt in the documented format verifies: other
    tools can make them. (scrypt$n$r$p$salt$key, unpadded standard base64.)"""
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"demo", salt=salt, n=16, r=8, p=1, dklen=32)
    text = "$".join(
        ["scrypt", "16", "8", "1"]
        + [base64.b64encode(part).decode().rstrip("=") for part in (salt, key)]
    )
    assert verify_password(text, b"demo")
    assert not verify_password(text, b"Demo")
    assert make_hash("demo", salt=salt, n=FAST) == text


def test_decoy_matches_nothing_and_costs_the_same() -> None:
    """The decoy for unknown system_ids has the same parameters and matches no password."""
    hashed = make_hash("x", n=FAST)
    decoy = decoy_like(hashed)
    assert parse_hash(decoy)[:3] == parse_hash(hashed)[:3]
    assert not verify_password(decoy, b"x")
    assert not verify_password(decoy, b"")


def test_default_cost() -> None:
    """The default parameters are the documented ones and take a noticeable, bounded time."""
    started = time.perf_counter()
    hashed = make_hash("secret1")
    assert verify_password(hashed, b"secret1")
    elapsed = (time.perf_counter() - started) / 2
    assert hashed.startswith(f"scrypt${2**15}$8$1$")
    assert 0.005 < elapsed < 2.0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("secret", "expected scrypt$<n>$<r>$<p>$<salt>$<key>"),
        ("bcrypt$16$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "expected scrypt$"),
        ("scrypt$x$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "n, r, p must be integers"),
        ("scrypt$16$8$1$!!!$AAAAAAAAAAAAAAAAAAAAAA", "salt, key base64"),
        ("scrypt$15$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "n must be a power of 2"),
        ("scrypt$16$0$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "r and p at least 1"),
        ("scrypt$1048576$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "need more than 256 MiB"),
        ("scrypt$16$8$1$AAAA$AAAAAAAAAAAAAAAAAAAAAA", "salt or key too short"),
    ],
)
def test_bad_hashes(text: str, problem: str) -> None:
    """A malformed hash is refused with what is wrong with it."""
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_hash(text)


def _run(monkeypatch: pytest.MonkeyPatch, stdin: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    return passwd.main(list(argv)), out.getvalue(), err.getvalue()


def test_passwd_command_prints_a_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """smpprelay-passwd reads a line from stdin and prints one hash that verifies it."""
    status, out, err = _run(monkeypatch, "secret1\n", "-n", "16")
    assert (status, err) == (0, "")
    hashed = out.strip()
    assert out == hashed + "\n"
    assert hashed.startswith("scrypt$16$8$1$")
    assert verify_password(hashed, b"secret1")


@pytest.mark.parametrize(
    ("stdin", "argv", "problem"),
    [
        ("123456789\n", [], "an SMPP password is 1 to 8 characters"),
        ("\n", [], "an SMPP password is 1 to 8 characters"),
        ("pässwd\n", [], "an SMPP password is printable ASCII"),
        ("secret\n", ["-n", "15"], "smpprelay-passwd:"),
    ],
)
def test_passwd_command_refuses(
    monkeypatch: pytest.MonkeyPatch, stdin: str, argv: list[str], problem: str
) -> None:
    """A password SMPP cannot carry, or a bad cost, prints the problem and exits 1."""
    status, out, err = _run(monkeypatch, stdin, *argv)
    assert (status, out) == (1, "")
    assert err.startswith(problem) or problem in err


@pytest.mark.parametrize("n", [2**30, 2**21, 15])
def test_cost_checked_before_hashing(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """A cost over the memory cap (or not a power of 2) is refused before scrypt runs: -n 2**30
    never tries to allocate 1 GiB; make_hash itself refuses it too."""
    derived: list[int] = []

    def derive(password: bytes, n: int, r: int, p: int, salt: bytes, length: int) -> bytes:
        derived.append(n)  # and no real scrypt: the probe must not allocate either
        return bytes(length)

    monkeypatch.setattr(passwd, "_derive", derive)
    status, out, err = _run(monkeypatch, "secret\n", "-n", str(n))
    assert (status, out) == (1, "")
    assert err.startswith("smpprelay-passwd: scrypt hash:")
    with pytest.raises(ValueError, match="scrypt hash"):
        make_hash("secret", n=n)
    assert derived == []
    make_hash("secret", n=FAST)  # the probe sees a real hash
    assert derived == [FAST]
