"""Benchmark: conversations answered by the AI stage, a model answering in 800 ms, plans in their lanes.

Three workspaces, one per plan, each with its own sandbox WhatsApp Cloud number, a small knowledge
base and an ``openai`` chatbot pointed at the sandbox's OpenAI imitation (every call answered after
``MODEL_LATENCY_MS``): premium 20 conversations, pro 60, basic 120 — 200, a tenth of them premium.
Each conversation is a closed loop of ``MESSAGES`` customer messages (1,000 inbound): the customer
writes (a signed WhatsApp webhook from the sandbox), waits for the bot's answer to be sent, and
writes again. Reported: replies/s (bot replies sent over the run), and inbound → reply latency,
``reply.sent_at − inbound.created_at``, at p50/p95 per plan; premium must lead (lowest p50 and p95),
since its lane has a process and greenlets of its own. Everything stays on loopback (the stack's
own sandbox); the run is bounded by ``DEADLINE_SECONDS`` and a per-answer wait.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
import requests

from services.local.stack import BIN, Stack
from tests.bench.idle import cpu_used
from tests.bench.load import cpu_snapshot, spread

MODEL_LATENCY_MS = 800
CONVERSATIONS, MESSAGES = 200, 5  # 1,000 inbound messages
SHARES = {"premium": 0.1, "pro": 0.3, "basic": 0.6}  # of the conversations: premium 20, pro 60, basic 120
ANSWER_WAIT_SECONDS = 120.0  # one answer not sent by then ends its conversation's loop
DEADLINE_SECONDS = 600.0  # the whole closed loop
MODEL_KEY = "sk-bench-conversations"
# Five questions, each sharing words with one item only, so the sandbox's model always answers.
KNOWLEDGE = [
    ("What are your opening hours?", "We are open Monday to Friday, 9:00 to 17:00."),
    ("How do refunds work?", "Refunds are paid to the original card within 14 days of the parcel arriving back."),
    ("Do you ship abroad?", "We ship to every country of the European Union in 3 to 5 working days."),
    ("How can I track my parcel?", "Every parcel has a tracking link in its shipping confirmation email."),
    ("Can I change my delivery address?", "Yes, until the parcel leaves the warehouse: reply with the new address."),
]
QUESTIONS = ["What are your opening hours today?", "How do refunds work for a return?", "Do you ship abroad to Spain?",
             "How can I track my parcel now?", "Can I change my delivery address please?"]


def start_model(stack: Stack, latency_ms: int) -> None:
    """The sandbox's model imitation, emptied, taking ``MODEL_KEY`` and answering after ``latency_ms``."""
    requests.delete(f"{stack.cfg.sandbox_url}/sandbox/openai", timeout=10).raise_for_status()
    requests.post(f"{stack.cfg.sandbox_url}/sandbox/openai/keys", json={"key": MODEL_KEY}, timeout=10).raise_for_status()
    requests.post(f"{stack.cfg.sandbox_url}/sandbox/openai/faults", json={"latency_ms": latency_ms},
                  timeout=10).raise_for_status()


def _cli(stack: Stack, *args: str) -> str:
    done = subprocess.run([str(BIN / "postroom"), *args], env={**os.environ, **stack.env}, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.strip()


def _api(stack: Stack, key: str, method: str, path: str, body: Any) -> dict[str, Any]:
    response = requests.request(method, f"http://127.0.0.1:{stack.cfg.postroom_api_port}{path}", json=body,
                                headers={"Authorization": f"Bearer {key}"}, timeout=30)
    if response.status_code >= 300:
        raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text}")
    result: dict[str, Any] = response.json()
    return result


def set_up_workspace(stack: Stack, plan: str, suffix: str, n: int) -> dict[str, Any]:
    """A workspace on ``plan`` with its own WhatsApp number, knowledge base and model chatbot."""
    name, phone = f"bench-{plan}-{suffix}", f"4{suffix[-6:]:0>6}{n:08d}"
    _cli(stack, "workspace", "create", name)
    key = _cli(stack, "apikey", "create", "--workspace", name, "--scopes", "admin")
    token, secret = f"bench-token-{plan}", f"bench-app-secret-{plan}"
    requests.post(f"{stack.cfg.sandbox_url}/sandbox/whatsapp_cloud/numbers", timeout=10, json={
        "phone_number_id": phone, "access_token": token, "app_secret": secret}).raise_for_status()
    _api(stack, key, "PUT", "/v1/channels/whatsapp_cloud", {
        "provider": "meta", "sender": phone, "rate_limit_per_second": 10_000.0,
        "credentials": {"access_token": token, "app_secret": secret, "verify_token": f"bench-verify-{plan}"}})
    _api(stack, key, "POST", "/v1/knowledge-items/import",
         {"items": [{"title": title, "body": body} for title, body in KNOWLEDGE]})
    _api(stack, key, "PUT", "/v1/chatbots/whatsapp_cloud", {
        "provider": "openai", "base_url": f"{stack.cfg.sandbox_url}/openai/v1", "api_key": MODEL_KEY,
        "model": "bench-model", "product_name": "Bench Parcels", "plan": plan, "monthly_quota": None,
        "timeout_seconds": 30.0})
    workspace_id = _one(stack, "SELECT id FROM workspace WHERE name = %s", (name,))
    return {"plan": plan, "name": name, "id": workspace_id, "phone": phone}


def _one(stack: Stack, sql: str, params: tuple[Any, ...]) -> int:
    with psycopg2.connect(stack.cfg.database_url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        value = int(cur.fetchone()[0])
    conn.close()
    return value


class Replies:
    """Bot replies (and handoff messages) sent so far per (workspace id, customer address), polled
    from the database by one thread; the conversations' loops wait on it."""

    def __init__(self, stack: Stack, workspace_ids: list[int]) -> None:
        self._url, self._ids = stack.cfg.database_url, workspace_ids
        self._sent: dict[tuple[int, str], tuple[int, int]] = {}  # (bot replies, handoff messages)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="bench-replies", daemon=True)

    def __enter__(self) -> Replies:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _poll(self) -> None:
        with psycopg2.connect(self._url) as conn, conn.cursor() as cur:
            while not self._stop.wait(0.05):
                cur.execute("SELECT c.workspace_id, c.address, count(*) FILTER (WHERE m.author = 'bot'),"
                            " count(*) FILTER (WHERE m.author = 'bot_handoff') FROM message m JOIN conversation c"
                            " ON c.id = m.conversation_id WHERE m.workspace_id = ANY(%s) AND m.direction = 'outbound'"
                            " AND m.sent_at IS NOT NULL GROUP BY 1, 2", (self._ids,))
                found = {(ws, address.lstrip("+")): (bot, handoff) for ws, address, bot, handoff in cur.fetchall()}
                conn.rollback()
                with self._changed:
                    self._sent = found
                    self._changed.notify_all()
        conn.close()

    def wait(self, workspace_id: int, address: str, count: int, until: float) -> bool:
        """Whether the bot's ``count``-th reply to ``address`` was sent before ``until`` (monotonic);
        false at once when the bot handed the conversation off (no more replies will come)."""
        def settled() -> bool:
            bot, handoff = self._sent.get((workspace_id, address), (0, 0))
            return bot >= count or handoff > 0 or time.monotonic() >= until

        with self._changed:
            self._changed.wait_for(settled, timeout=max(0.0, until - time.monotonic()))
            bot, handoff = self._sent.get((workspace_id, address), (0, 0))
            return bot >= count and handoff == 0


def converse(stack: Stack, replies: Replies, workspace: dict[str, Any], customer: str, messages: int,
             deadline: float) -> int:
    """One customer's closed loop: write, wait for the answer to be sent, write again; messages answered."""
    session = requests.Session()
    for n in range(messages):
        session.post(f"{stack.cfg.sandbox_url}/sandbox/whatsapp_cloud/inbound", timeout=30, json={
            "from": customer, "text": QUESTIONS[n % len(QUESTIONS)], "phone_number_id": workspace["phone"]}
                     ).raise_for_status()
        until = min(deadline, time.monotonic() + ANSWER_WAIT_SECONDS)
        if not replies.wait(workspace["id"], customer, n + 1, until):
            return n
    return messages


def customers(count: int, n: int) -> list[str]:
    """WhatsApp ids of workspace ``n``'s customers (distinct across workspaces)."""
    return [f"1650{n}{i:06d}" for i in range(count)]


def split(conversations: int) -> dict[str, int]:
    """Conversations per plan: a tenth premium, three tenths pro, the rest basic (each at least 1)."""
    premium, pro = max(1, round(conversations * SHARES["premium"])), max(1, round(conversations * SHARES["pro"]))
    return {"premium": premium, "pro": pro, "basic": max(1, conversations - premium - pro)}


def figures(stack: Stack, workspaces: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """Latency per plan, pairing each conversation's k-th inbound with its k-th bot reply."""
    ids = [w["id"] for w in workspaces]
    with psycopg2.connect(stack.cfg.database_url) as conn, conn.cursor() as cur:
        cur.execute("""
            WITH i AS (SELECT conversation_id, created_at, row_number() OVER (PARTITION BY conversation_id ORDER BY id) AS k
                       FROM message WHERE workspace_id = ANY(%(ids)s) AND direction = 'inbound'),
                 r AS (SELECT conversation_id, sent_at, author, row_number() OVER (PARTITION BY conversation_id ORDER BY id) AS k
                       FROM message WHERE workspace_id = ANY(%(ids)s) AND direction = 'outbound' AND sent_at IS NOT NULL)
            SELECT w.plan, r.author, extract(epoch FROM r.sent_at - i.created_at) * 1000, extract(epoch FROM r.sent_at)
            FROM i JOIN r USING (conversation_id, k) JOIN conversation c ON c.id = i.conversation_id
                 JOIN workspace w ON w.id = c.workspace_id""", {"ids": ids})
        pairs = cur.fetchall()
        cur.execute("SELECT count(*) FROM message WHERE workspace_id = ANY(%s) AND direction = 'inbound'", (ids,))
        inbound = int(cur.fetchone()[0])
    conn.close()
    bot = [p for p in pairs if p[1] == "bot"]
    last = max((float(p[3]) for p in bot), default=started)
    per_plan = {w["plan"]: {"conversations": w["conversations"], "replies": sum(1 for p in bot if p[0] == w["plan"]),
                            "handoffs": sum(1 for p in pairs if p[0] == w["plan"] and p[1] != "bot"),
                            "inbound_to_reply_ms": spread([float(p[2]) for p in bot if p[0] == w["plan"]])}
                for w in workspaces}
    return {"inbound": inbound, "replies": len(bot), "seconds": round(last - started, 2),
            "replies_per_s": round(len(bot) / (last - started), 1) if bot and last > started else 0.0,
            "plans": per_plan}


def premium_leads(plans: dict[str, Any]) -> bool:
    """Premium's p50 and p95 are the lowest of the three plans."""
    try:
        return all(plans["premium"]["inbound_to_reply_ms"][q] < plans[other]["inbound_to_reply_ms"][q]
                   for other in ("pro", "basic") for q in ("p50", "p95"))
    except KeyError:  # a plan without any reply
        return False


def run(stack: Stack, conversations: int = CONVERSATIONS, messages: int = MESSAGES) -> dict[str, Any]:
    """Set up the three workspaces, run every conversation's closed loop at once, and measure."""
    suffix = str(int(time.time()))
    start_model(stack, MODEL_LATENCY_MS)
    workspaces = [{**set_up_workspace(stack, plan, suffix, n), "conversations": count}
                  for n, (plan, count) in enumerate(split(conversations).items())]
    loops = [(w, customer) for n, w in enumerate(workspaces) for customer in customers(w["conversations"], n)]
    cpu_before = cpu_snapshot(stack)
    started_wall, started = time.time(), time.monotonic()
    with Replies(stack, [w["id"] for w in workspaces]) as replies, ThreadPoolExecutor(len(loops)) as pool:
        answered = list(pool.map(lambda loop: converse(stack, replies, loop[0], loop[1], messages,
                                                          started + DEADLINE_SECONDS),
                                 loops))
    cpu = cpu_used(cpu_before, cpu_snapshot(stack))
    model = requests.get(f"{stack.cfg.sandbox_url}/sandbox/openai/stats", timeout=10).json()
    requests.delete(f"{stack.cfg.sandbox_url}/sandbox/openai/faults", timeout=10).raise_for_status()
    result = figures(stack, workspaces, started_wall)
    result.update(model_latency_ms=MODEL_LATENCY_MS, messages_per_conversation=messages,
                  conversations=len(loops), loops_completed=sum(1 for a in answered if a == messages),
                  model_requests=model["requests"], model_max_in_flight=model["max_in_flight"],
                  cpu_ms_per_reply={g: round(s * 1000 / max(1, result["replies"]), 2) for g, s in cpu.items()})
    result["premium_leads"] = premium_leads(result["plans"])
    return result


def table(r: dict[str, Any]) -> str:
    lines = [f"scenario: {r['conversations']} conversations x {r['messages_per_conversation']} messages (closed loop), "
             f"model answers in {r['model_latency_ms']} ms, plans premium/pro/basic "
             f"{'/'.join(str(p['conversations']) for p in r['plans'].values())}",
             f"  inbound {r['inbound']}, bot replies {r['replies']} in {r['seconds']} s: {r['replies_per_s']} replies/s; "
             f"model requests {r['model_requests']} (at most {r['model_max_in_flight']} at once)",
             f"  {'plan':<8} {'conv':>5} {'replies':>8} {'handoffs':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for plan, p in r["plans"].items():
        lat = p["inbound_to_reply_ms"]
        lines.append(f"  {plan:<8} {p['conversations']:>5} {p['replies']:>8} {p['handoffs']:>8} {lat.get('p50', '-'):>8} "
                     f"{lat.get('p95', '-'):>8} {lat.get('p99', '-'):>8}")
    lines.append(f"  premium leads (lowest p50 and p95): {'yes' if r['premium_leads'] else 'NO'}")
    return "\n".join(lines + [""])
