"""One chaos run: start a private stack, subscribe a webhook endpoint, run the chosen scenarios in
turn, and count them.

The scenarios share one stack and one webhook endpoint (a sandbox receiver subscribed to
``message.sent``, ``message.delivered`` and ``message.failed``), one after another, each with its
own message bodies; the sandbox's record of sends is never cleared, so after the last scenario
every scenario's provider side is counted again and a duplicate that arrived after its scenario
ended still shows in its row. The receiver's record is cleared after each scenario's webhooks
are counted (it keeps a bounded number of requests).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from tests.chaos import conversations
from tests.chaos.harness import ChaosStack
from tests.chaos.outcome import Row, count
from tests.chaos.scenarios import SCENARIOS, Params, run_scenario, subscribe
from tests.chaos.traffic import Traffic

NAMES = [*SCENARIOS, "conversations"]  # the message scenarios, then the AI stage's


def run_chaos(params: Params, names: list[str], var_dir: Path, output: Path | None = None,
              echo: bool = True) -> list[Row]:
    """Run ``names`` (of ``NAMES``) on a fresh stack under ``var_dir``; return their rows."""
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; known: {NAMES}")
    run_id = uuid.uuid4().hex[:6]
    rows: list[tuple[Row, Traffic | None, str]] = []
    started = time.monotonic()
    with ChaosStack(var_dir) as cs:
        webhooks = subscribe(cs)
        for name in names:
            began = time.monotonic()
            if name == "conversations":
                row, traffic = conversations.run(cs, params), None
            else:
                row, traffic = run_scenario(cs, run_id, name, params, webhooks)
            rows.append((row, traffic, f"chaos {run_id} {name}"))
            if echo:
                print(f"{name}: {row.messages} messages, {row.lost} lost, {row.duplicates} duplicates, "
                      f"{row.webhooks_lost} webhooks lost ({time.monotonic() - began:.0f} s)", flush=True)
        received = cs.received_bodies()
        final = []
        for row, traffic, tag in rows:
            if traffic is None:  # counted by its own scenario, after its quiet moment
                final.append(row)
                continue
            again = count(Row(row.scenario, row.posted, row.messages), traffic, received, tag,
                          cs.statuses(traffic.ids()))
            if again.duplicates != row.duplicates:
                row.notes.append(f"{again.duplicates - row.duplicates} more duplicates arrived after the scenario ended")
                row.duplicates, row.delivered_once = again.duplicates, again.delivered_once
            final.append(row)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"run": run_id, "params": asdict(params), "seconds": round(time.monotonic() - started),
                                      "rows": [r.as_json() for r in final]}, indent=2))
    return final
