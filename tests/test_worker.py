"""`postroom worker` as a real process: idle cost that does not grow with its greenlets, prompt stop.

The workers run against the test session's Redis and PostgreSQL, as `make run` runs them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from common.config import ROOT
from tests.support import wait_for

POSTROOM = Path(sys.executable).parent / "postroom"


def start_worker(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    metrics = tmp_path / "metrics" / name
    metrics.mkdir(parents=True)
    log = tmp_path / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT),  # this checkout's code, whichever one the venv installed
           "POSTROOM_LOG_LEVEL": "INFO", "dramatiq_prom_db": str(metrics), "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    env.pop("dramatiq_prom_port", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(POSTROOM), "worker", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


@pytest.fixture
def idle_senders(tmp_path: Path, broker) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], Path]]]:
    """Two SMS senders serving both lanes, one with 8 greenlets per lane and one with 256."""
    workers = {n: start_worker(tmp_path, f"sms-{n}", "sms", "--threads", str(n)) for n in (8, 256)}
    try:
        for proc, log in workers.values():
            wait_for(lambda log=log, proc=proc: "worker sms serving" in log.read_text() or proc.poll() is not None, timeout=60,
                     what="the worker to start")
            assert proc.poll() is None, log.read_text()[-3000:]
        yield workers
    finally:
        for proc, _ in workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_an_idle_workers_cpu_does_not_grow_with_its_greenlets(idle_senders):
    assert "sms_urgent (8 greenlets), sms_normal (8 greenlets), sms_bulk (8 greenlets)" in idle_senders[8][1].read_text()
    assert "sms_urgent (256 greenlets), sms_normal (256 greenlets), sms_bulk (256 greenlets)" in idle_senders[256][1].read_text()
    time.sleep(1.0)  # boot work (imports, first connections) is done

    before = {n: cpu_seconds(proc) for n, (proc, _) in idle_senders.items()}
    window = 4.0
    time.sleep(window)
    used = {n: cpu_seconds(proc) - before[n] for n, (proc, _) in idle_senders.items()}

    # Dramatiq's own loop wakes every greenlet every poll (256 x 10/s, ~4 % of a core here) and
    # polls Redis from every consumer; a worker that waits for work burns next to nothing.
    assert used[256] <= 2 * used[8] + 0.02 * window, used  # at most 2 % of a core more
    assert used[256] < 0.02 * window, used


def test_a_worker_stops_promptly_and_cleanly_on_sigterm_although_it_waits_idle(idle_senders):
    proc, log = idle_senders[256]
    time.sleep(1.0)  # its consumers are now waiting for a wake-up (up to 5 s)

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(15)

    assert code == 0, log.read_text()[-3000:]
    assert time.monotonic() - started < 4.0  # not held up by the idle wait
    assert "stopped" in log.read_text()
