"""smpprelay: an SMPP 3.4 relay that checks every submit_sm against the operator's rules."""

__version__ = "0.1.0"
