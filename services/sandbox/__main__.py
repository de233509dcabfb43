"""``python -m services.sandbox``: run the sandbox under gunicorn's gevent worker.

Replaces this process with gunicorn — one worker, because the sandbox's state is in memory, and
gevent with many connections, because benchmarks keep hundreds of provider calls in flight.
Host and port come from settings; extra arguments are passed to gunicorn.
"""

from __future__ import annotations

import os
import sys

from common.config import ROOT, settings


def gunicorn_argv(host: str, port: int, extra: list[str]) -> list[str]:
    """The gunicorn command line that serves the sandbox on ``host:port``."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        "gevent",
        "-w",
        "1",
        "--worker-connections",
        "2000",
        "--keep-alive",
        "75",  # like a provider's load balancer: idle client connections are not cut after 2 s
        "--graceful-timeout",
        "3",  # and it stops promptly even while clients hold keep-alive connections
        "-b",
        f"{host}:{port}",
        "--no-control-socket",  # gunicorn's default socket path is shared by every gunicorn on the host
        "--chdir",
        str(ROOT),  # so that `services.sandbox` imports wherever this is started from
        *extra,
        "services.sandbox.app:app",
    ]


def main() -> None:
    argv = gunicorn_argv(
        settings.postroom_sandbox_host, settings.postroom_sandbox_port, sys.argv[1:]
    )
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
