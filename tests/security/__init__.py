"""The adversarial suite (issue 11): one module per attack class, black-box over real sockets.

Each test's docstring says in one line what an attacker sends and what the relay must do.
"""
