"""Fuzzing (issue 11): wire parsers alone, and hostile bytes against a running relay and agent.

``test_protocol_fuzz.py`` fuzzes the sans-I/O parsers. The other modules drive the
properties of :mod:`tests.fuzz.targets` (control-channel JSON both ways, HTTP-mode heads
and bodies, frames on both legs of a splice, listener answers in HTTP mode) over real
sockets, a bounded number of examples each. ``python -m tests.fuzz --examples 100000``
runs the same properties as a long campaign and prints its figures as JSON.
"""
