"""``python -m tests.chaos`` (``make chaos``): run the chaos scenarios on a private stack, print the table.

Exits 1 when any scenario lost or duplicated a message or lost a webhook, so the numbers can gate a
pipeline (webhook repeats are allowed: webhook delivery is at least once).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import ROOT
from tests.chaos.report import table
from tests.chaos.runner import NAMES, run_chaos
from tests.chaos.scenarios import Params

defaults = Params()
parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
parser.add_argument("--messages", type=int, default=defaults.messages, help="messages posted per scenario")
parser.add_argument("--scenarios", default=",".join(NAMES),
                    help=f"comma-separated, from: {', '.join(NAMES)}")
parser.add_argument("--spread-seconds", type=float, default=defaults.spread_seconds,
                    help="post each scenario's messages over at least this long (longer when its fault lasts longer)")
parser.add_argument("--fault-at", type=float, default=defaults.fault_at,
                    help="seconds after posting starts that a mid-run fault (flush, restart, freeze) hits")
parser.add_argument("--kill-every", type=float, default=defaults.kill_every, help="seconds between worker kills")
parser.add_argument("--kill-seconds", type=float, default=defaults.kill_seconds,
                    help="how long the kills go on (they stop earlier once every message is settled)")
parser.add_argument("--down-seconds", type=float, default=defaults.down_seconds,
                    help="how long Redis or PostgreSQL stays stopped in a restart")
parser.add_argument("--freeze-seconds", type=float, default=defaults.freeze_seconds,
                    help="how long every PostgreSQL process stays SIGSTOPped")
parser.add_argument("--provider-seconds", type=float, default=defaults.provider_seconds,
                    help="how long the provider misbehaves (it stops earlier once every message is settled)")
parser.add_argument("--settle-seconds", type=float, default=defaults.settle_seconds,
                    help="longest wait after a fault for every message to settle")
parser.add_argument("--output", default="var/chaos/results.json", help="where to write the JSON results")
args = parser.parse_args()

params = Params(messages=args.messages, spread_seconds=args.spread_seconds, fault_at=args.fault_at,
                kill_every=args.kill_every, kill_seconds=args.kill_seconds, down_seconds=args.down_seconds,
                freeze_seconds=args.freeze_seconds, provider_seconds=args.provider_seconds,
                settle_seconds=args.settle_seconds)
output = Path(args.output) if Path(args.output).is_absolute() else ROOT / args.output
rows = run_chaos(params, [s.strip() for s in args.scenarios.split(",") if s.strip()], output.parent / "stack", output)
print()
print(table(rows))
print(f"\nwritten to {output}")
sys.exit(1 if any(r.lost or r.duplicates or r.webhooks_lost for r in rows) else 0)
