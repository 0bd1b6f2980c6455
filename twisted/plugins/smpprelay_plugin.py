"""Registers ``twistd smpprelay`` and ``twistd smpprelay-simulator``."""

from twisted.application.service import ServiceMaker

smpprelay = ServiceMaker(
    "smpprelay-relay", "smpprelay.tap", "SMPP relay enforcing an operator's rules", "smpprelay"
)
smpprelay_simulator = ServiceMaker(
    "smpprelay-simulator",
    "smpprelay.simulator_tap",
    "A simulated SMSC: accepts binds, answers submits, sends delivery receipts",
    "smpprelay-simulator",
)
