"""``make chaos``: the pipeline under crashes, outages and a misbehaving provider, counted honestly.

Each scenario runs against a private stack of real processes (``services.local.stack.Stack``):
messages go in through the HTTP API while a fault is injected — worker processes SIGKILLed,
Redis flushed or restarted, PostgreSQL restarted or frozen, the provider failing, throttling and
timing out — and when the scenario has settled, every message is counted from both sides: what
the provider sandbox received (each message has a unique body) and what the database recorded,
and every webhook event those messages caused from both sides too: the steps the database
recorded and what the run's webhook endpoint (a sandbox receiver) got.
``python -m tests.chaos --help`` lists the parameters; ``tests/test_chaos.py`` runs a small
version of every scenario as part of ``make test``.
"""
