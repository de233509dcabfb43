"""Local imitation of the messaging providers postroom talks to, on their real wire formats.

The sandbox is one gevent-served Flask process (``services.sandbox.app:app``) that answers like
the provider would — ids, error bodies, signed status callbacks — records what it received, and
injects faults on demand, so that the real provider clients run unchanged against it in local
runs, tests and benchmarks. Each provider is one blueprint, ``/receiver/<name>`` imitates a
customer's webhook endpoint (``receiver_api``), and ``/sandbox/*`` is the control API.
"""
