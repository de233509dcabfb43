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
from services.local.stack import Stack, private_env

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


def cpu_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds each group used between two snapshots; a process started in between (a new
    database backend, say) counts whole. A process that ended in between is not seen at all."""
    return {name: sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in procs.items())
            for name, procs in after.items()}


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
    used = cpu_used(before, cpu_seconds(stack_processes(stack)))
    percent = {name: round(100 * cpu / elapsed, 2) for name, cpu in used.items()}
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
    with Stack(env=private_env(stack_dir, 23500 + os.getpid() % 4000, POSTROOM_LOG_LEVEL="WARNING")) as stack:
        stack.start()
        settle()
        idle = measure_idle(stack, args.seconds)
    out.write_text(json.dumps(idle, indent=2))
    print(idle_table(idle))


if __name__ == "__main__":
    main()
