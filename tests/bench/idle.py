"""Idle cost: the CPU the whole local stack burns with no traffic at all, as % of one core.

Every service process with its children, PostgreSQL and Redis are sampled over a quiet window
(``psutil`` user + system time), so polling loops show up no matter which process runs them.
The sandbox stands in for the providers and is listed, but not counted toward the goal.
``python -m tests.bench.idle`` measures a fresh private stack on its own; ``make bench`` reports
the same figure next to its throughput scenarios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import psutil

from common.config import ROOT
from services.local import infra as localinfra
from services.local.stack import Stack

GOAL_PERCENT = 5.0
NOT_COUNTED = ("sandbox",)  # an imitation of the providers, not part of postroom


def stack_processes(stack: Stack) -> dict[str, list[psutil.Process]]:
    """Every process of each group now: a service with its children, PostgreSQL, Redis."""
    groups: dict[str, list[psutil.Process]] = {}
    roots = [(name, popen.pid) for name, popen in stack.processes.items()]
    roots += [(server.name, server.pid) for server in stack.infra]
    for name, pid in roots:
        try:
            root = psutil.Process(pid)
            groups[name] = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            groups[name] = []
    return groups


def cpu_seconds(groups: dict[str, list[psutil.Process]]) -> dict[str, dict[int, float]]:
    """CPU seconds (user + system) of every process of every group, by pid."""
    snapshot: dict[str, dict[int, float]] = {}
    for name, procs in groups.items():
        snapshot[name] = {}
        for proc in procs:
            try:
                t = proc.cpu_times()
                snapshot[name][proc.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return snapshot


def measure_idle(stack: Stack, seconds: float) -> dict[str, Any]:
    """Percent of one core each process group used over ``seconds`` of no traffic, and totals.

    Processes that start during the window (a new database backend) count whole; the window is
    taken between two snapshots of the same process list, so nothing is missed that lived
    through it.
    """
    groups = stack_processes(stack)
    before = cpu_seconds(groups)
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    after = cpu_seconds(stack_processes(stack))
    percent = {name: round(100 * sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in procs.items()) / elapsed, 2)
               for name, procs in after.items()}
    counted = sum(v for name, v in percent.items() if name not in NOT_COUNTED)
    return {"seconds": round(elapsed, 1), "percent_of_one_core": percent,
            "processes": {name: len(procs) for name, procs in groups.items()},
            "total_percent": round(counted, 2), "total_with_sandbox_percent": round(sum(percent.values()), 2),
            "goal_percent": GOAL_PERCENT}


def idle_table(idle: dict[str, Any]) -> str:
    lines = [f"idle cost: no traffic for {idle['seconds']} s, CPU as % of one core (goal: total < {GOAL_PERCENT:g} %)"]
    for name, value in sorted(idle["percent_of_one_core"].items(), key=lambda kv: -kv[1]):
        note = "  (provider imitation, not counted)" if name in NOT_COUNTED else ""
        lines.append(f"    {name:<18} {value:>6.2f} %   {idle['processes'].get(name, 0)} process(es){note}")
    verdict = "ok" if idle["total_percent"] < GOAL_PERCENT else "OVER THE GOAL"
    lines.append(f"    {'total':<18} {idle['total_percent']:>6.2f} %   {verdict}")
    lines.append(f"    {'with the sandbox':<18} {idle['total_with_sandbox_percent']:>6.2f} %")
    return "\n".join(lines) + "\n"


def bench_env(stack_dir: Path, port_base: int) -> dict[str, str]:
    env = {
        "POSTROOM_VAR_DIR": str(stack_dir),
        "POSTROOM_API_PORT": str(localinfra.free_port()),
        "POSTROOM_SANDBOX_PORT": str(localinfra.free_port()),
        "POSTROOM_METRICS_PORT_BASE": str(port_base),
        "POSTROOM_LOG_LEVEL": "WARNING",
        "TWILIO_API_BASE": "",  # always this stack's own sandbox, never a real provider
    }
    env["POSTROOM_PUBLIC_URL"] = f"http://127.0.0.1:{env['POSTROOM_API_PORT']}"
    return env


def settle(seconds: float = 3.0) -> None:
    """Let start-up work (gunicorn workers booting, first connections) finish before measuring."""
    time.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.idle", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the quiet window")
    parser.add_argument("--output", default="var/bench/idle.json", help="where to write the JSON result")
    args = parser.parse_args()
    out = Path(args.output) if Path(args.output).is_absolute() else ROOT / args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    stack_dir = out.parent / "idle-stack"
    shutil.rmtree(stack_dir, ignore_errors=True)
    with Stack(env=bench_env(stack_dir, 22000 + os.getpid() % 9000)) as stack:
        stack.start()
        settle()
        idle = measure_idle(stack, args.seconds)
    out.write_text(json.dumps(idle, indent=2))
    print(idle_table(idle))


if __name__ == "__main__":
    main()
