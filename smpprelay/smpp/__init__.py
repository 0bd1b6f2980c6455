"""SMPP 3.4 on the wire, without Twisted, one concern a module.

``constants`` (ids, statuses, tags, their names), ``framing`` (the stream, the header, responses),
``short_message`` (submit_sm and deliver_sm bodies), ``validation`` (what a submit may hold) and
``binds`` (the only user of ``smpp.pdu``'s codec). `smpprelay.pdu` re-exports all of them.
"""
