"""``python -m tests.bench`` (``make bench``): run the benchmark scenarios on one private stack.

Starts a fresh private stack under the output's directory (as ``make run`` does, with its own
PostgreSQL, Redis and sandbox), measures its idle cost (``tests.bench.idle``), runs the API
scenarios (``tests.bench.api_sms``), a bulk batch on every channel (``tests.bench.channels``), the webhook campaign (``tests.bench.webhooks``) and a batch of
messages due in the same second (``tests.bench.scheduling``), conversations answered by the AI stage
with a model answering in 800 ms (``tests.bench.conversations``), prints a table for each and writes
them all as one JSON document. The campaign scenario (``tests.bench.campaign``) then starts a
stack of its own, whose SMS sender talks to a lean Twilio imitation (or ``--provider-url``), after
the first one stopped. ``--only`` picks some of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import psutil

from common.config import ROOT
from services.local.stack import Stack, private_env
from tests.bench import api_sms, campaign, channels, conversations, scheduling, webhooks
from tests.bench.idle import idle_table, measure_idle, settle
from tests.bench.load import CLIENT_THREADS

SECTIONS = ("idle", "sms", "lanes", "channels", "webhooks", "scheduling", "conversations", "campaign")

parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--count", type=int, default=2000, help="messages per API scenario (sms, lanes)")
parser.add_argument("--channel-count", type=int, default=2000, help="bulk messages per channel of the channels scenario")
parser.add_argument("--webhook-count", type=int, default=10_000,
                    help="messages of the webhook campaign (run twice: without and with the endpoint)")
parser.add_argument("--scheduling-count", type=int, default=5000,
                    help="messages due in the same second, per scheduling run (bulk, bulk at 150 ms, urgent, bulk without receipts)")
parser.add_argument("--conversations", type=int, default=conversations.CONVERSATIONS,
                    help="conversations of the conversation scenario (a tenth premium, three tenths pro, the rest basic)")
parser.add_argument("--conversation-messages", type=int, default=conversations.MESSAGES,
                    help="customer messages per conversation, each waiting for the bot's answer (closed loop)")
parser.add_argument("--campaign-count", type=int, default=100_000,
                    help="recipients of the campaign scenario's campaign (run at provider latency 0 and 150 ms)")
parser.add_argument("--provider-url", default=None,
                    help="campaign scenario: a running Twilio imitation to send to (default: env POSTROOM_BENCH_PROVIDER_URL,"
                         " else tests.bench.lean_provider started for the run)")
parser.add_argument("--peers-summary", default=None,
                    help="campaign goals: a result of the peers' bench_same.py (JSONL or JSON) for the same_bullmq and"
                         " same_dramatiq figures")
parser.add_argument("--bullmq-rate", type=float, default=None, help="campaign goals: same_bullmq end-to-end msg/s")
parser.add_argument("--dramatiq-rate", type=float, default=None, help="campaign goals: same_dramatiq end-to-end msg/s")
parser.add_argument("--bullmq-cpu-ms", type=float, default=None,
                    help="campaign goals: same_bullmq CPU ms per message of workers + PostgreSQL + Redis")
parser.add_argument("--output", default="var/bench/api_sms.json", help="where to write the JSON results")
parser.add_argument("--idle-seconds", type=float, default=20.0, help="length of the no-traffic window for the idle cost")
parser.add_argument("--only", choices=SECTIONS, action="append",
                    help="run only this part (repeatable); default: all of " + ", ".join(SECTIONS))
args = parser.parse_args()
only = set(args.only or SECTIONS)

out = Path(args.output) if Path(args.output).is_absolute() else ROOT / args.output
out.parent.mkdir(parents=True, exist_ok=True)
stack_dir = out.parent / "stack"
report: dict[str, Any] = {"benchmark": "api_single_sms", "cores": psutil.cpu_count(), "client_threads": CLIENT_THREADS,
                          "settings": {k: v for k, v in os.environ.items() if k.startswith("POSTROOM_")}}
tables = []
if only - {"campaign"}:  # the scenarios that share one stack
    shutil.rmtree(stack_dir, ignore_errors=True)  # a fresh private stack: nothing left from an earlier run
    with Stack(env=private_env(stack_dir, 28000 + os.getpid() % 4000, POSTROOM_LOG_LEVEL="WARNING", **channels.UNPACED)) as stack:
        key = stack.start()
        settle()
        if "idle" in only:
            report["idle"] = measure_idle(stack, args.idle_seconds)
            tables.append(idle_table(report["idle"]))
            print(tables[-1], flush=True)
        if "sms" in only:
            report["results"] = [api_sms.run_scenario(stack, key, args.count, name, latency) for name, latency in api_sms.SCENARIOS]
            tables.append(api_sms.table(report["results"]))
        if "lanes" in only:
            report["lanes"] = api_sms.run_lanes_scenario(stack, key, args.count)
            tables.append(api_sms.lanes_table(report["lanes"]))
        if "channels" in only:
            report["channels"] = channels.run(stack, key, args.channel_count)
            tables.append(channels.table(report["channels"]))
        if "webhooks" in only:
            report["webhooks"] = webhooks.run(stack, key, args.webhook_count)
            tables.append(webhooks.table(report["webhooks"]))
        if "scheduling" in only:
            report["scheduling"] = scheduling.run(stack, key, args.scheduling_count)
            tables.append(scheduling.table(report["scheduling"]))
        if "conversations" in only:
            report["conversations"] = conversations.run(stack, args.conversations, args.conversation_messages)
            tables.append(conversations.table(report["conversations"]))
if "campaign" in only:  # on a stack of its own, once the other one stopped
    peers = campaign.peer_figures(args.peers_summary, args.bullmq_rate, args.dramatiq_rate, args.bullmq_cpu_ms)
    report["campaign"] = campaign.run(out.parent / "campaign-stack", args.campaign_count, args.provider_url, peers)
    tables.append(campaign.table(report["campaign"]))
out.write_text(json.dumps(report, indent=2))
print("\n".join(tables))
print(f"written to {out}")
