"""``python -m services.sandbox``: run the sandbox, its HTTP app and its SMTP server.

The HTTP app runs under gunicorn's gevent worker — one worker, because the sandbox's state is in
memory, and gevent with many connections, because benchmarks keep hundreds of provider calls in
flight. The SMTP server (aiosmtpd, asyncio) runs in a process of its own beside it
(``services.sandbox.smtp_server``); this process starts both, passes SIGTERM and SIGINT on to
them, and exits when either does (stopping the other), so whatever supervises the sandbox sees a
half-dead sandbox as a dead one and restarts it. Hosts and ports come from settings; extra arguments are
passed to gunicorn.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from types import FrameType

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
        "10000",  # each sender process keeps up to POSTROOM_SENDER_CONCURRENCY keep-alive connections per lane and provider
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


def _terminate_with_parent() -> None:
    """In each child before exec: get SIGTERM if this process dies without stopping it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main() -> None:
    argv = gunicorn_argv(
        settings.postroom_sandbox_host, settings.postroom_sandbox_port, sys.argv[1:]
    )
    children = [
        subprocess.Popen([sys.executable, "-m", "services.sandbox.smtp_server"], cwd=ROOT,
                         preexec_fn=_terminate_with_parent),
        subprocess.Popen(argv, preexec_fn=_terminate_with_parent),
    ]

    def stop(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        time.sleep(0.5)  # until either child exits (a signal meanwhile stops both)
    code = next(child.returncode for child in children if child.returncode is not None)
    stop(signal.SIGTERM, None)
    for child in children:
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    sys.exit(code)


if __name__ == "__main__":
    main()
