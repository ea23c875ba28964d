"""Development and test harness: child processes and a throwaway relay cluster on loopback.

Not part of the relay, the listener or the client: ``hybridrelay dev cluster``
(``scripts/cluster``), the benches (``bench/``) and the tests (``tests/harness/``) use it.
It runs relays as subprocesses (``python -m hybridrelay ...``), so it imports no relay
code: :mod:`hybridrelay.dev.children` (one child process, its output, its stop) and
:mod:`hybridrelay.dev.cluster` (Redis, relay nodes, nginx).
"""
