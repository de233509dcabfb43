"""The conversations scenario: customers' WhatsApp messages answered by the AI stage while the
processes on their path are SIGKILLed.

Three workspaces, one per plan, each with the bench's knowledge base and an ``openai`` chatbot on
the sandbox's model imitation (``MODEL_LATENCY_MS`` a call), as in ``tests/bench/conversations``.
``CONVERSATIONS`` customers each write ``MESSAGES`` questions in a closed loop (write, wait for the
answer to be sent, write again) while one process of a service on that path (processing, routing,
both AI lanes' workers, the WhatsApp Cloud sender, receipts) is SIGKILLed every ``kill_every`` s.

Counted per conversation, from the database and from the provider sandbox: every inbound message
is owed exactly one reply (the bot's answer, or the handoff message when the stage hands the
conversation to a person), and every reply sent must reach the provider once. A reply never made
or never sent is *lost*; a second reply to one inbound message, or a reply the provider received
twice, is a *duplicate*. Handoffs are shown in the notes: a turn the stage could not finish within
its deadline is handed to a person with the handoff message, which is a reply, not a loss.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
import requests

from tests.bench.conversations import (
    MESSAGES,
    Replies,
    converse,
    customers,
    set_up_workspace,
    split,
    start_model,
)
from tests.chaos.harness import ChaosStack
from tests.chaos.outcome import Row
from tests.chaos.scenarios import Params

CONVERSATIONS = 30  # premium 3, pro 9, basic 18
MODEL_LATENCY_MS = 300
ON_THE_PATH = frozenset({"processing", "routing", "ai-premium", "ai", "sender-whatsapp-cloud", "receipts"})
LABEL = "conversations: SIGKILL the AI path every 2 s"


def run(cs: ChaosStack, p: Params) -> Row:
    """Run the closed loops under kills; count every conversation's replies on both sides."""
    stack = cs.stack
    start_model(stack, MODEL_LATENCY_MS)
    suffix = str(int(time.time()))
    workspaces = [{**set_up_workspace(stack, plan, suffix, n), "conversations": count}
                  for n, (plan, count) in enumerate(split(CONVERSATIONS).items())]
    loops = [(w, customer) for n, w in enumerate(workspaces) for customer in customers(w["conversations"], n)]
    deadline = time.monotonic() + p.settle_seconds + p.kill_seconds
    killed: Counter[str] = Counter()
    with Replies(stack, [w["id"] for w in workspaces]) as replies, ThreadPoolExecutor(len(loops)) as pool:
        talks = [pool.submit(converse, stack, replies, w, customer, MESSAGES, deadline) for w, customer in loops]
        start = time.monotonic()
        while time.monotonic() - start < p.kill_seconds and not all(t.done() for t in talks):
            name = cs.kill_random_worker(among=ON_THE_PATH)
            if name:
                killed[name] += 1
            time.sleep(p.kill_every)
        kills_end = time.monotonic()
        completed = sum(1 for t in talks if t.result() == MESSAGES)
    recovery = round(time.monotonic() - kills_end, 1)
    model = requests.get(f"{stack.cfg.sandbox_url}/sandbox/openai/stats", timeout=10).json()
    requests.delete(f"{stack.cfg.sandbox_url}/sandbox/openai/faults", timeout=10).raise_for_status()
    time.sleep(p.quiet_seconds)  # a late second reply would show now
    row, handed_off = count(cs, [w["id"] for w in workspaces])
    row.recovery_seconds = recovery if completed + handed_off >= len(loops) else None
    row.notes[:0] = [f"killed {sum(killed.values())} processes ({', '.join(f'{k} {v}' for k, v in sorted(killed.items()))}); "
                     f"{completed} of {len(loops)} conversations answered all {MESSAGES} messages; "
                     f"model requests {model['requests']} for {row.messages} inbound messages"]
    return row


def count(cs: ChaosStack, workspace_ids: list[int]) -> tuple[Row, int]:
    """Per conversation: inbound messages, replies sent, replies failed (database), and the sends the
    provider received for its customer (sandbox). Returns the row and the conversations handed off."""
    with psycopg2.connect(cs.database_url) as conn, conn.cursor() as cur:
        cur.execute("""
            SELECT c.address, c.status,
                   count(*) FILTER (WHERE m.direction = 'inbound'),
                   count(*) FILTER (WHERE m.direction = 'outbound' AND m.status IN ('sent', 'delivered', 'read')),
                   count(*) FILTER (WHERE m.direction = 'outbound' AND m.status = 'failed'),
                   count(*) FILTER (WHERE m.direction = 'outbound' AND m.author = 'bot_handoff')
            FROM conversation c JOIN message m ON m.conversation_id = c.id
            WHERE c.workspace_id = ANY(%s) GROUP BY c.id, c.address, c.status""", (workspace_ids,))
        rows: list[tuple[Any, ...]] = cur.fetchall()
    conn.close()
    listing = requests.get(f"{cs.sandbox}/sandbox/messages", params={"channel": "whatsapp_cloud"}, timeout=60)
    listing.raise_for_status()
    at_provider = Counter(str(m["to"]).lstrip("+") for m in listing.json()["messages"])
    row = Row(scenario=LABEL, posted=0, messages=0)
    handoffs = handed_off = 0
    for address, status, inbound, sent, failed, handoff in rows:
        received = at_provider.get(address.lstrip("+"), 0)
        row.posted += inbound
        row.messages += inbound
        row.delivered_once += min(inbound, sent, received)
        row.duplicates += max(0, sent + failed - inbound) + max(0, received - sent)
        row.lost += max(0, inbound - sent - failed)
        row.failed += failed
        handoffs += 1 if handoff else 0
        handed_off += 1 if status == "open" else 0
    if handoffs:
        row.notes.append(f"{handoffs} conversations handed to a person with the handoff message (a turn past its deadline)")
    return row, handed_off
