"""SMPP 3.4 numbers and their names: command ids, statuses, TLV tags, bind kinds, receipt states.

Plain data and the three functions that name a number for logs and metrics. ``smpp.pdu`` is
read here only for its table of status names.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, Literal

from smpp.pdu import constants as smpp_constants

__all__ = [
    "BIND_KINDS",
    "MAX_SEQUENCE",
    "MESSAGE_STATES",
    "RECEIPT_ESM_BITS",
    "RESPONSE_BIT",
    "SPEC_STATUSES",
    "BindKind",
    "CommandId",
    "Status",
    "Tag",
    "command_label",
    "command_name",
    "status_label",
    "status_name",
]

RESPONSE_BIT: Final = 0x80000000
MAX_SEQUENCE: Final = 0x7FFFFFFF


class CommandId(IntEnum):
    """command_id values of SMPP 3.4 (spec 5.1.2.1)."""

    generic_nack = 0x80000000
    bind_receiver = 0x00000001
    bind_receiver_resp = 0x80000001
    bind_transmitter = 0x00000002
    bind_transmitter_resp = 0x80000002
    query_sm = 0x00000003
    query_sm_resp = 0x80000003
    submit_sm = 0x00000004
    submit_sm_resp = 0x80000004
    deliver_sm = 0x00000005
    deliver_sm_resp = 0x80000005
    unbind = 0x00000006
    unbind_resp = 0x80000006
    replace_sm = 0x00000007
    replace_sm_resp = 0x80000007
    cancel_sm = 0x00000008
    cancel_sm_resp = 0x80000008
    bind_transceiver = 0x00000009
    bind_transceiver_resp = 0x80000009
    outbind = 0x0000000B
    enquire_link = 0x00000015
    enquire_link_resp = 0x80000015
    submit_multi = 0x00000021
    submit_multi_resp = 0x80000021
    alert_notification = 0x00000102
    data_sm = 0x00000103
    data_sm_resp = 0x80000103


class Status(IntEnum):
    """The command_status values the relay itself answers (spec 5.1.3)."""

    ESME_ROK = 0x00
    ESME_RINVMSGLEN = 0x01
    ESME_RINVCMDLEN = 0x02
    ESME_RINVCMDID = 0x03
    ESME_RINVBNDSTS = 0x04
    ESME_RALYBND = 0x05
    ESME_RINVPRTFLG = 0x06
    ESME_RINVREGDLVFLG = 0x07
    ESME_RSYSERR = 0x08
    ESME_RINVSRCADR = 0x0A
    ESME_RINVDSTADR = 0x0B
    ESME_RINVMSGID = 0x0C
    ESME_RBINDFAIL = 0x0D
    ESME_RINVPASWD = 0x0E
    ESME_RINVSYSID = 0x0F
    ESME_RCANCELFAIL = 0x11
    ESME_RREPLACEFAIL = 0x13
    ESME_RMSGQFUL = 0x14
    ESME_RINVSERTYP = 0x15
    ESME_RINVNUMDESTS = 0x33  # submit_multi: number_of_dests 0 or above 254
    ESME_RINVDLNAME = 0x34  # submit_multi: a distribution list the relay does not keep
    ESME_RINVDESTFLAG = 0x40  # submit_multi: dest_flag neither 1 (SME) nor 2 (list)
    ESME_RINVESMCLASS = 0x43
    ESME_RSUBMITFAIL = 0x45
    ESME_RINVSRCTON = 0x48
    ESME_RINVSRCNPI = 0x49
    ESME_RINVDSTTON = 0x50
    ESME_RINVDSTNPI = 0x51
    ESME_RINVREPFLAG = 0x54
    ESME_RTHROTTLED = 0x58
    ESME_RINVSCHED = 0x61
    ESME_RINVEXPIRY = 0x62
    ESME_RX_T_APPN = 0x64
    ESME_RX_P_APPN = 0x65
    ESME_RX_R_APPN = 0x66
    ESME_RQUERYFAIL = 0x67
    ESME_RINVOPTPARSTREAM = 0xC0
    ESME_RINVPARLEN = 0xC2
    ESME_RMISSINGOPTPARAM = 0xC3
    ESME_RUNKNOWNERR = 0xFF


class Tag(IntEnum):
    """TLV tags the relay reads."""

    receipted_message_id = 0x001E
    sar_msg_ref_num = 0x020C
    sar_total_segments = 0x020E
    sar_segment_seqnum = 0x020F
    sc_interface_version = 0x0210
    message_payload = 0x0424
    message_state = 0x0427


# What a bind asks for: to send, to receive, or both on one session.
BindKind = Literal["transmitter", "receiver", "transceiver"]

BIND_KINDS: Final[dict[CommandId, BindKind]] = {
    CommandId.bind_transmitter: "transmitter",
    CommandId.bind_receiver: "receiver",
    CommandId.bind_transceiver: "transceiver",
}

# esm_class message-type bits that mark a deliver_sm as a receipt or an acknowledgement about
# an earlier submit (SMSC receipt 0x04, SME ack 0x08, intermediate notification 0x20): all of
# them carry the id of that submit and go back to whoever sent it, as Kannel does.
RECEIPT_ESM_BITS: Final = 0x04 | 0x08 | 0x20

# message_state values (3.4 section 5.2.28) by the stat: names of a receipt text (appendix B).
MESSAGE_STATES: Final = {
    "ENROUTE": 1,
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
}

_STATUS_NAMES: Final[dict[int, str]] = {
    code: info["name"] for code, info in smpp_constants.command_status_value_map.items()
}


def status_name(code: int) -> str:
    """The spec name of a command_status (ESME_RTHROTTLED), or its hex value if it has none."""
    return _STATUS_NAMES.get(code) or f"0x{code:08X}"


# The command_status values SMPP 3.4 defines (Table 5-2: all of them below 0x100; the map
# smpp.pdu keeps also holds 5.0's and its own negative codes).
SPEC_STATUSES: Final[frozenset[int]] = frozenset(
    code for code in _STATUS_NAMES if 0 <= code <= 0xFF
)


def status_label(code: int, vendor: frozenset[int] = frozenset()) -> str:
    """A command_status as a metric label: its spec name for a 3.4 status, its hex value for
    one of the ``vendor`` statuses configured, and "other" for every other value.

    The operator chooses the statuses it answers: one label for the unexpected ones keeps the
    number of series bounded whatever it sends (the app still gets the exact status, and logs
    keep the hex value).
    """
    if code in SPEC_STATUSES or code in vendor:
        return status_name(code)
    return "other"


def command_name(code: int) -> str:
    """The spec name of a command_id, or its hex value if it is not a 3.4 command."""
    try:
        return CommandId(code).name
    except ValueError:
        return f"0x{code:08X}"


def command_label(code: int) -> str:
    """A command_id as a metric label: its spec name, or "other" for every id not in 3.4.

    A peer chooses the ids it sends; one label for all unknown ones keeps the number of
    series bounded whatever it sends (logs keep the hex value).
    """
    try:
        return CommandId(code).name
    except ValueError:
        return "other"
