"""Tests for smpprelay.smpp.constants: the names of statuses and commands."""

from __future__ import annotations

from smpprelay.smpp.constants import SPEC_STATUSES, command_name, status_label, status_name


def test_status_name_known_and_vendor() -> None:
    """Known statuses have their spec name; vendor ones their hex value."""
    assert status_name(0x58) == "ESME_RTHROTTLED"
    assert status_name(0) == "ESME_ROK"
    assert status_name(0x400) == "0x00000400"


def test_command_name_known_and_unknown() -> None:
    """command_name names 3.4 commands and gives others as hex."""
    assert command_name(0x80000004) == "submit_sm_resp"
    assert command_name(0x77) == "0x00000077"


def test_status_label_names_3_4_statuses_and_buckets_the_rest() -> None:
    """3.4 statuses keep their names, configured vendor ones their hex value, all else "other"."""
    assert status_label(0x58) == "ESME_RTHROTTLED"
    assert status_label(0xFF) == "ESME_RUNKNOWNERR"
    assert status_label(0x400) == "other"
    assert status_label(0x400, frozenset({0x400})) == "0x00000400"
    assert status_label(0x401, frozenset({0x400})) == "other"
    assert status_label(0x101) == "other"  # an SMPP 5.0 status
    assert status_label(0xFFFFFFFF) == "other"
    assert all(code <= 0xFF for code in SPEC_STATUSES)
    assert 0x58 in SPEC_STATUSES
    assert 0xC0 in SPEC_STATUSES
