"""``python -m tests.bench`` (``make bench``): run every benchmark scenario on a private stack."""

from __future__ import annotations

import argparse

from tests.bench import api_sms

parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
parser.add_argument("--count", type=int, default=2000, help="messages per scenario")
parser.add_argument("--output", default="var/bench/api_sms.json", help="where to write the JSON results")
parser.add_argument("--idle-seconds", type=float, default=20.0, help="length of the no-traffic window for the idle cost")
args = parser.parse_args()
api_sms.main(args.count, args.output, args.idle_seconds)
