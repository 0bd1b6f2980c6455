"""Tests for smpprelay.smpp.constants: the names of statuses and commands."""

from __future__ import annotations

from smpprelay.smpp.constants import command_name, status_name


def test_status_name_known_and_vendor() -> None:
    """Known statuses have their spec name; vendor ones their hex value."""
    assert status_name(0x58) == "ESME_RTHROTTLED"
    assert status_name(0) == "ESME_ROK"
    assert status_name(0x400) == "0x00000400"


def test_command_name_known_and_unknown() -> None:
    """command_name names 3.4 commands and gives others as hex."""
    assert command_name(0x80000004) == "submit_sm_resp"
    assert command_name(0x77) == "0x00000077"
