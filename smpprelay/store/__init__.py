"""The state the router (and later the rules) keep, behind small interfaces.

``memory`` is the only backend so far: bounded, with TTLs, lost on restart.
"""
