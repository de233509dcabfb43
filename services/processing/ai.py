"""The AI stage's job: answer the inbound messages a ``bot`` conversation is owed, once per turn.

``answer_turns(ids, lane)`` takes a small batch (``dispatch.BATCH_SIZES["ai"]`` ids) and, per
conversation of it, holding no database connection during a model call or any wait:

1. *Tx A*, once for the batch — lease the conversations (one turn per conversation at a time; a
   conversation leased elsewhere has its ids re-enqueued shortly, no attempt spent). Not ``bot``
   (a human has it): its waiting rows end ``processed`` ``{"ai": "skipped"}``. Else the *turn* is
   every waiting inbound row (a burst is answered once), with the context since the last
   resolve, the chatbot's configuration, a handoff keyword check (no call, no quota), a quota
   reservation, and the top 5 knowledge passages. The connection goes back to the pool.
2. *Decide*, each turn on its own thread (greenlet) — ``extractive``: the best passage verbatim
   or a handoff; ``openai``: one model call (``common.providers.openai_chat``) on one of the
   lane's call slots (POSTROOM_AI_GREENLETS_<PLAN> per process: the most model calls the lane
   keeps in flight), unless the model key is paused by a 429. A turn that finds no free slot
   in time is given back for later, no attempt spent.
3. *Tx B*, as soon as that turn is decided — re-check under the conversation's lock that the
   lease is still ours and the conversation still ``bot``: if a human took it meanwhile, nothing
   is sent (``superseded``). Then the reply (``author='bot'``), or a handoff (``bot → open``,
   with the handoff or fallback message, ``author='bot_handoff'``: a handoff always tells the
   customer), or a retry later. The turn's reply goes on to processing after its own commit,
   never waiting for a slower turn of the batch.

The sender re-checks once more at its claim (``common.conversations.BOT_IN_CHARGE_SQL``): a bot
reply whose conversation is no longer ``bot``, or has changed hands since the reply was made, is
cancelled, never sent. The reconciler
(``services.scheduler.ai_redrive``) re-drives turns a lost broker message left waiting.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common import (
    chatbots,
    conversations,
    dispatch,
    intake,
    knowledge,
    lifecycle,
    metrics,
    ratelimit,
    usage,
)
from common.broker import PLAN_LANES
from common.config import settings
from common.db.connection import db, fetch, fetch_dicts, release_connection, transaction
from common.errors import PermanentError, ProviderError, Throttled
from common.providers import openai_chat
from common.providers.openai_chat import Completion, MalformedAnswer
from services.processing import answers, extractive, prompt

log = logging.getLogger("postroom.ai")
LEASED_ELSEWHERE_DELAY_MS = 250
BUSY_DELAY_MS = 1000  # a turn that found no free call slot in time comes back after this
# What a batch's turns need besides their slot wait and their call: Tx A, Tx B, Redis, hand-on.
# The actor's time limit is the lease; a turn waits for a slot at most until the lease minus the
# longest call minus this, so the batch ends well within both.
TURN_MARGIN_SECONDS = 30.0
MAX_THROTTLES = 8  # 429s one turn may wait out before it is an error
HISTORY = 10
# Two bots answering each other (or a mail loop) stop here: past this many bot replies in an hour
# a conversation goes to a person.
MAX_REPLIES_PER_HOUR = 20
PAUSE_PROVIDER = "ai"
WORD = re.compile(r"\w+")

_LEASE = """
UPDATE conversation c SET ai_lease_until = now() + make_interval(secs => %(lease)s), ai_lease_token = txid_current()
WHERE c.id IN (SELECT conversation_id FROM message WHERE id = ANY(%(ids)s) AND direction = 'inbound'
               AND (status || '') = 'received' AND ai_lane IS NOT NULL AND (due_at IS NULL OR due_at <= now()))
  AND (c.ai_lease_until IS NULL OR c.ai_lease_until < now())
RETURNING c.id, c.workspace_id, c.channel, c.address, c.status, c.context_after_id, c.ai_lease_token AS token
"""
_WAITING = """
SELECT id, conversation_id, body, to_addr, created_at, ai_lane, attempts, throttles, redrives, content->>'subject' AS subject
FROM message
WHERE conversation_id = ANY(%(convs)s) AND direction = 'inbound' AND (status || '') = 'received' AND ai_lane IS NOT NULL
  AND (due_at IS NULL OR due_at <= now())
ORDER BY conversation_id, id
"""
_HISTORY = """
SELECT h.conversation_id, h.id, h.direction, h.author, h.body
FROM unnest(%(convs)s::bigint[], %(after)s::bigint[]) AS c(id, after_id)
CROSS JOIN LATERAL (
    SELECT m.conversation_id, m.id, m.direction, m.author, m.body FROM message m
    WHERE m.conversation_id = c.id AND m.id > c.after_id AND NOT (m.id = ANY(%(turn_ids)s))
      AND m.status NOT IN ('cancelled', 'suppressed', 'failed')
    ORDER BY m.id DESC LIMIT """ + str(HISTORY) + """
) h
ORDER BY h.conversation_id, h.id
"""
_RECENT_REPLIES = """
SELECT conversation_id, count(*) AS n FROM message
WHERE conversation_id = ANY(%s) AND direction = 'outbound' AND author = 'bot' AND created_at > now() - interval '1 hour'
GROUP BY conversation_id
"""
_UNLEASE = "UPDATE conversation SET ai_lease_until = NULL, ai_lease_token = NULL WHERE id = %s AND ai_lease_token = %s"
_RECHECK = "SELECT status FROM conversation WHERE id = %s AND ai_lease_token = %s FOR UPDATE"
_RETRY = """
UPDATE message SET due_at = now() + make_interval(secs => %(wait)s), status_changed_at = now(), updated_at = now(),
       attempts = %(attempts)s, throttles = %(throttles)s, error_code = %(code)s, last_error = %(error)s
WHERE id = ANY(%(ids)s) AND (status || '') = 'received'
"""


@dataclass
class Outcome:
    """What a turn ends in: ``answered`` (``text``), ``handoff`` (``reason``; ``error``: the
    fallback message), ``retry`` (after ``wait`` seconds), ``later`` (no call slot was free in
    time: given back, no attempt spent), or ``skipped``."""

    kind: str
    text: str | None = None
    reason: str | None = None
    error: bool = False
    wait: float = 0.0
    throttled: bool = False
    detail: str | None = None
    completion: Completion | None = None
    by: str = "bot"  # who moves the conversation on a handoff (the reconciler for a stuck turn)


@dataclass
class Turn:
    """One conversation's waiting inbound rows and what answering them needs."""

    conversation: dict[str, Any]
    rows: list[dict[str, Any]]
    bot: Bot | None = None
    history: list[prompt.Said] = field(default_factory=list)
    passages: list[dict[str, Any]] = field(default_factory=list)
    reservation: int | None = None
    decided: Outcome | None = None
    recent_replies: int = 0

    @property
    def ids(self) -> list[int]:
        return [row["id"] for row in self.rows]

    @property
    def text(self) -> str:
        return "\n".join(row["body"] for row in self.rows if row["body"])

    @property
    def lane(self) -> str:
        return self.rows[-1]["ai_lane"]


@dataclass(frozen=True)
class Bot:
    """The channel's chatbot as a turn needs it (its API key unsealed, never logged)."""

    provider: str
    enabled: bool
    base_url: str | None
    model: str | None
    api_key: str | None = field(repr=False)
    handoff_message: str
    fallback_message: str
    handoff_keywords: tuple[str, ...]
    timeout_seconds: float
    language: str
    min_score: float
    min_margin: float
    weights: tuple[float, float]
    prompt: dict[str, Any]  # what prompt.build_request reads: model, temperature, max_tokens, product_name, ...


def load_bot(workspace_id: int, channel: str) -> Bot | None:
    """The channel's chatbot, read afresh for each turn (one primary-key read beside a model call
    of a second or more; a change through the API applies to the next turn at once)."""
    row = chatbots.get(workspace_id, channel)
    if row is None:
        return None
    settings_ = row.get("settings") or {}
    weights = settings_.get("weights")
    if not (isinstance(weights, list) and len(weights) == 2 and all(isinstance(w, int | float) for w in weights)):
        weights = knowledge.WEIGHTS
    return Bot(row["provider"], row["enabled"], row["base_url"], row["model"],
               chatbots.api_key(row) if row["provider"] == "openai" else None,
               row["handoff_message"], row["fallback_message"], tuple(row["handoff_keywords"] or ()),
               min(float(row["timeout_seconds"]), settings.postroom_ai_timeout_seconds), row["language"], float(row["min_score"]), float(row["min_margin"]),
               (float(weights[0]), float(weights[1])),
               {"model": row["model"], "temperature": row["temperature"], "max_tokens": row["max_tokens"],
                "product_name": row["product_name"], "guidelines": row["guidelines"], "language": row["language"],
                "json_mode": settings_.get("json_mode", True) is not False})


@dataclass
class Followups:
    """Work to enqueue after the commits: replies for processing (by lane), retries of turns."""

    replies: list[tuple[str, int]] = field(default_factory=list)
    retries: list[tuple[str, list[int], int]] = field(default_factory=list)


# Model calls in flight per plan lane in this process: as many as the lane has greenlets, however
# many turns its batches hold.
_slots = {lane: threading.BoundedSemaphore(int(getattr(settings, f"postroom_ai_greenlets_{lane}"))) for lane in PLAN_LANES}


@contextmanager
def _transaction() -> Iterator[None]:
    """A transaction whose connection goes back to the pool when it ends (unless a caller's
    transaction encloses it): no connection is held across a model call, a slot wait or another
    turn's work."""
    enclosed = not db.is_closed() and db.in_transaction()
    try:
        with transaction():
            yield
    finally:
        if not enclosed:
            release_connection()


def slot_wait_seconds() -> float:
    """How long a batch's turns may wait for a call slot, counted from the batch's start: the
    lease less the longest call and TURN_MARGIN_SECONDS (at least 1 s)."""
    return max(1.0, settings.postroom_ai_lease_seconds - settings.postroom_ai_timeout_seconds - TURN_MARGIN_SECONDS)


def answer_turns(ids: Sequence[int], lane: str) -> None:
    """Answer the turns among ``ids`` (see the module's docstring), each recorded and handed on
    as soon as it is decided. Ids beyond the stage's batch size (a message enqueued otherwise)
    are re-enqueued in batches of that size, so one actor never holds more turns than its time
    limit allows."""
    size = dispatch.BATCH_SIZES["ai"]
    if len(ids) > size:
        dispatch.to_stage("ai", lane, list(ids[size:]))
        ids = ids[:size]
    slot_deadline = time.monotonic() + slot_wait_seconds()
    with _transaction():
        turns, elsewhere = begin(ids)
    if elsewhere:
        _hand_on_logged(Followups(retries=[(lane, elsewhere, LEASED_ELSEWHERE_DELAY_MS)]))
    if len(turns) == 1:
        answer_turn(turns[0], lane, slot_deadline)
    elif turns:
        with ThreadPoolExecutor(max_workers=len(turns), thread_name_prefix="ai-turn") as pool:
            list(pool.map(lambda turn: answer_turn(turn, lane, slot_deadline), turns))


def answer_turn(turn: Turn, lane: str, slot_deadline: float) -> None:
    """Decide one turn, record it (Tx B) and hand its reply or retry on."""
    followups = Followups()
    try:
        finish(turn, decide_in_slot(turn, lane, slot_deadline), followups)
    except Exception:  # a bug: this turn waits for the reconciler, the batch's others go on
        log.exception("the AI turn of conversation %s failed", turn.conversation["id"])
        return
    _hand_on_logged(followups)


def hand_on(followups: Followups) -> None:
    """Enqueue replies for processing and turns to retry (after every commit)."""
    by_lane: dict[str, list[int]] = {}
    for reply_lane, reply_id in followups.replies:
        by_lane.setdefault(reply_lane, []).append(reply_id)
    for reply_lane, reply_ids in by_lane.items():
        dispatch.to_stage("processing", reply_lane, reply_ids)
    for retry_lane, retry_ids, delay_ms in followups.retries:
        dispatch.to_stage("ai", retry_lane, retry_ids, delay_ms=delay_ms)


def _hand_on_logged(followups: Followups) -> None:
    """``hand_on`` after a commit that must stand even if the broker fails: the rows wait in
    PostgreSQL and the reconcilers re-drive them."""
    try:
        hand_on(followups)
    except Exception:
        log.exception("handing on %d AI replies and %d retries failed; the reconciler re-drives them",
                      len(followups.replies), len(followups.retries))


# --- Tx A ---------------------------------------------------------------------------------------

def begin(ids: Sequence[int]) -> tuple[list[Turn], list[int]]:
    """Lease the batch's conversations and gather their turns (inside a transaction).

    Returns:
      The turns to answer (skipped ones already recorded), and the ids whose conversation another
      worker holds (to be re-enqueued shortly).
    """
    leased = fetch_dicts(_LEASE, {"ids": list(ids), "lease": settings.postroom_ai_lease_seconds})
    rows = fetch_dicts(_WAITING, {"convs": [c["id"] for c in leased]}) if leased else []
    by_conv: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_conv.setdefault(row["conversation_id"], []).append(row)
    held = {r["id"] for r in rows}
    waiting = fetch("SELECT id FROM message WHERE id = ANY(%s) AND (status || '') = 'received' AND ai_lane IS NOT NULL"
                    " AND (due_at IS NULL OR due_at <= now())", (list(ids),))
    elsewhere = [i for (i,) in waiting if i not in held]
    turns, skipped = [], []
    for conv in leased:
        turn = Turn(conv, by_conv.get(conv["id"], []))
        if not turn.rows:
            fetch(_UNLEASE, (conv["id"], conv["token"]))
            continue
        turn.bot = load_bot(conv["workspace_id"], conv["channel"]) if conv["status"] == "bot" else None
        if turn.bot is None or not turn.bot.enabled:
            skipped.append(turn)
        else:
            turns.append(turn)
    for turn in skipped:  # a human has it, or its chatbot is gone: the bot owes it nothing
        lifecycle.advance(turn.ids, ["received"], "processed", detail={"ai": "skipped"})
        fetch(_UNLEASE, (turn.conversation["id"], turn.conversation["token"]))
        metrics.AI_ANSWERS.labels(outcome="skipped", reason=turn.conversation["status"]).inc()
    if turns:
        _gather_history(turns)
        recent = dict(fetch(_RECENT_REPLIES, ([t.conversation["id"] for t in turns],)))
        for turn in turns:
            turn.recent_replies = int(recent.get(turn.conversation["id"], 0))
        for turn in turns:
            prepare(turn)
    return turns, elsewhere


def _gather_history(turns: list[Turn]) -> None:
    found = fetch_dicts(_HISTORY, {"convs": [t.conversation["id"] for t in turns],
                                   "after": [t.conversation["context_after_id"] for t in turns],
                                   "turn_ids": [i for t in turns for i in t.ids]})
    by_conv = {t.conversation["id"]: t for t in turns}
    for row in found:
        by_conv[row["conversation_id"]].history.append(
            prompt.Said(prompt.speaker(row["direction"], row["author"]), row["body"] or ""))


def asks_for_a_person(text: str, keywords: Sequence[str]) -> bool:
    """Whether ``text`` holds one of the handoff keywords as a whole word (or phrase), casefolded."""
    said = " " + " ".join(WORD.findall(text.casefold())) + " "
    return any(f" {' '.join(WORD.findall(k.casefold()))} " in said for k in keywords if WORD.search(k))


def prepare(turn: Turn) -> None:
    """Keyword, quota and retrieval for a turn (inside Tx A); sets ``decided`` when no call is needed."""
    bot, conv = turn.bot, turn.conversation
    assert bot is not None
    if asks_for_a_person(turn.text, bot.handoff_keywords):
        turn.decided = Outcome("handoff", reason="keyword")
        return
    if turn.recent_replies >= MAX_REPLIES_PER_HOUR:
        turn.decided = Outcome("handoff", reason="reply_limit", detail=f"{turn.recent_replies} bot replies in the last hour")
        return
    if _throttled_too_often(turn):
        turn.decided = Outcome("handoff", reason="provider_error", error=True, detail="rate limited too often")
        return
    turn.reservation = usage.reserve(conv["workspace_id"], conv["id"])
    if turn.reservation is None:
        turn.decided = Outcome("handoff", reason="quota")
        return
    turn.passages = knowledge.retrieve(conv["workspace_id"], knowledge.REGCONFIG.get(bot.language, "simple"),
                                       turn.text, bot.weights)
    if bot.provider == "extractive":
        body = extractive.answer(turn.passages, bot.min_score, bot.min_margin)
        turn.decided = Outcome("answered", text=body) if body is not None else Outcome("handoff", reason="low_confidence")


def _throttled_too_often(turn: Turn) -> bool:
    return max(row["throttles"] for row in turn.rows) >= MAX_THROTTLES


# --- the call -----------------------------------------------------------------------------------

def decide_in_slot(turn: Turn, lane: str, slot_deadline: float) -> Outcome:
    """The turn's outcome; a model call waits for one of the lane's slots until ``slot_deadline``
    (``time.monotonic()``), else the turn is given back for later."""
    if turn.decided is not None:
        return turn.decided
    slot = _slots[lane] if lane in _slots else _slots[turn.lane]
    if not slot.acquire(timeout=max(0.0, slot_deadline - time.monotonic())):
        return Outcome("later", detail="every model call slot of the lane stayed busy")
    try:
        return decide(turn)
    finally:
        slot.release()


def pause_key(bot: Bot) -> str:
    """The Redis pause key of a model account: a hash of its base URL and key (neither stored)."""
    return hashlib.sha256(f"{bot.base_url}|{bot.api_key or ''}".encode()).hexdigest()[:16]


def decide(turn: Turn) -> Outcome:
    if turn.decided is not None:
        return turn.decided
    bot = turn.bot
    assert bot is not None
    try:
        _, paused = ratelimit.take_tokens(PAUSE_PROVIDER, pause_key(bot), 0.0, 1)
        if paused > 0:
            return Outcome("retry", wait=paused, throttled=True, detail="the model server asked us to wait (429)")
        request = prompt.build_request(bot.prompt, [prompt.Passage(p["title"], p["body"], p.get("source_url"))
                                                    for p in turn.passages], turn.history, turn.text)
        completion = openai_chat.complete(bot.base_url or "", bot.api_key, request, bot.timeout_seconds)
    except MalformedAnswer as exc:
        return Outcome("handoff", reason="malformed", detail=str(exc))
    except Throttled as exc:
        wait = exc.retry_after if exc.retry_after is not None else openai_chat.DEFAULT_THROTTLE_SECONDS
        try:
            ratelimit.pause(PAUSE_PROVIDER, pause_key(bot), wait)
        except Exception:  # losing the pause only costs more 429s
            log.warning("could not record a model 429 pause", exc_info=True)
        return Outcome("retry", wait=wait, throttled=True, detail=exc.detail)
    except PermanentError as exc:
        return Outcome("handoff", reason="provider_error", error=True, detail=exc.detail)
    except ProviderError as exc:  # transient
        return _transient(turn, exc.detail, exc.retry_after)
    except Exception as exc:  # a bug or Redis gone: retried like a transient error, never lost
        log.exception("AI turn of conversation %s failed unexpectedly", turn.conversation["id"])
        return _transient(turn, f"unexpected error: {exc!r}"[:300], None)
    verdict = answers.judge(completion)
    if verdict.malformed:
        return Outcome("handoff", reason="malformed", detail=verdict.malformed, completion=completion)
    if verdict.reply is not None:
        return Outcome("answered", text=verdict.reply, completion=completion)
    return Outcome("handoff", reason="model", detail=verdict.reason, completion=completion)


def backoff_seconds(attempt: int) -> float:
    """The senders' backoff (POSTROOM_RETRY_BASE_SECONDS doubling up to _MAX, jittered in its upper half)."""
    ceiling = min(settings.postroom_retry_max_seconds, settings.postroom_retry_base_seconds * 2 ** max(0, attempt - 1))
    return ceiling / 2 + random.random() * ceiling / 2


def _transient(turn: Turn, detail: str, retry_after: float | None) -> Outcome:
    errors = max(row["attempts"] - row["throttles"] for row in turn.rows) + 1
    if errors >= settings.postroom_ai_max_attempts:
        return Outcome("handoff", reason="provider_error", error=True, detail=detail)
    return Outcome("retry", wait=retry_after if retry_after is not None else backoff_seconds(errors), detail=detail)


# --- Tx B ---------------------------------------------------------------------------------------

def finish(turn: Turn, outcome: Outcome, followups: Followups) -> None:
    """Record the turn's outcome in one transaction, unless a human took the conversation."""
    conv = turn.conversation
    try:
        with _transaction():
            still = fetch(_RECHECK, (conv["id"], conv["token"]))
            if not still or still[0][0] != "bot":
                outcome = Outcome("superseded", reason="human_took_over", completion=outcome.completion)
                _end_turn(turn, outcome, reply_id=None)
                _release(turn)
            elif outcome.kind == "later":
                _release(turn)
                followups.retries.append((turn.lane, turn.ids, BUSY_DELAY_MS))
            elif outcome.kind == "retry":
                _retry(turn, outcome, followups)
            elif outcome.kind == "answered":
                _answer(turn, outcome, followups)
            else:
                _hand_off(turn, outcome, followups)
            fetch(_UNLEASE, (conv["id"], conv["token"]))
    except Exception:
        log.exception("recording the AI turn of conversation %s failed; its lease is given back and the reconciler"
                      " re-drives it", conv["id"])
        _unlease(conv)
        return
    metrics.AI_ANSWERS.labels(outcome=_metric_outcome(outcome), reason=_metric_reason(turn, outcome)).inc()
    if outcome.kind in ("answered", "handoff"):
        waited = (datetime.now(UTC) - turn.rows[0]["created_at"]).total_seconds()
        metrics.AI_INBOUND_TO_REPLY.labels(lane=turn.lane).observe(waited)


def _unlease(conv: dict[str, Any]) -> None:
    """End the turn's lease after its Tx B failed (the rollback kept it), so a re-drive need not
    wait it out; should this fail too (the database gone), the lease simply runs out."""
    try:
        with _transaction():
            fetch(_UNLEASE, (conv["id"], conv["token"]))
    except Exception:
        log.warning("could not give back the AI lease of conversation %s; it runs out by itself", conv["id"], exc_info=True)


def _metric_outcome(outcome: Outcome) -> str:
    if outcome.kind == "handoff" and outcome.error:
        return "error"
    return "retry" if outcome.kind == "later" else outcome.kind


def _metric_reason(turn: Turn, outcome: Outcome) -> str:
    if outcome.kind == "answered":
        return turn.bot.provider if turn.bot else "model"
    if outcome.kind == "later":
        return "busy"
    if outcome.kind == "retry":
        return "throttled" if outcome.throttled else "transient"
    return outcome.reason or "model"


def reply_priority(lane: str) -> str:
    """Premium replies ride the urgent lane downstream, the others normal (an OTP never waits
    behind a basic plan's replies)."""
    return "urgent" if lane == "premium" else "normal"


def _reply(turn: Turn, body: str, author: str) -> int | None:
    """Insert the bot's outbound message into the conversation (``author`` bot or bot_handoff)."""
    conv, last = turn.conversation, turn.rows[-1]
    content: dict[str, Any] = {"track_clicks": False}
    if conv["channel"] == "email":
        subject = last.get("subject") or ""
        content["subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}".strip()
    row = intake.insert(conv["workspace_id"], {
        "channel": conv["channel"], "to": conv["address"], "from": last["to_addr"] or None,
        "body": prompt.cut(body, conv["channel"]), "priority": reply_priority(turn.lane), "content": content,
        "author": author, "conversation_id": conv["id"]}, f"ai:{author}:{last['id']}")
    return row["id"] if row else None


def _answer(turn: Turn, outcome: Outcome, followups: Followups) -> None:
    reply_id = _reply(turn, outcome.text or "", "bot")
    if reply_id is not None:
        followups.replies.append((reply_priority(turn.lane), reply_id))
        if turn.reservation is not None:
            usage.attach(turn.reservation, reply_id)
    else:
        _release(turn)
    _end_turn(turn, outcome, reply_id)


def _hand_off(turn: Turn, outcome: Outcome, followups: Followups) -> None:
    bot, conv = turn.bot, turn.conversation
    assert bot is not None
    text = bot.fallback_message if outcome.error else bot.handoff_message
    reply_id = _reply(turn, text, "bot_handoff")
    conversations.move(conv["workspace_id"], conv["id"], ["bot"], "open", outcome.reason or "model", outcome.by,
                       message_id=turn.ids[-1])
    if reply_id is not None:
        followups.replies.append((reply_priority(turn.lane), reply_id))
    _release(turn)
    _end_turn(turn, outcome, reply_id)


def _release(turn: Turn) -> None:
    """Give back the turn's quota reservation: no reply of the bot's will count."""
    if turn.reservation is not None:
        usage.release([turn.reservation])
        turn.reservation = None


def _retry(turn: Turn, outcome: Outcome, followups: Followups) -> None:
    _release(turn)
    attempts = max(row["attempts"] for row in turn.rows) + 1
    throttles = max(row["throttles"] for row in turn.rows) + int(outcome.throttled)
    fetch(_RETRY, {"ids": turn.ids, "wait": outcome.wait, "attempts": attempts, "throttles": throttles,
                   "code": "ai_throttled" if outcome.throttled else "ai_transient", "error": (outcome.detail or "")[:500]})
    if outcome.wait <= lifecycle.SHORT_WAIT_SECONDS:
        followups.retries.append((turn.lane, turn.ids, max(1, int(outcome.wait * 1000))))


def _end_turn(turn: Turn, outcome: Outcome, reply_id: int | None) -> None:
    """The turn's rows end ``processed``, and the AI call (or extractive decision) is logged."""
    detail: dict[str, Any] = {"ai": "error" if outcome.error else outcome.kind}
    if reply_id is not None:
        detail["reply_id"] = reply_id
    if outcome.kind != "answered" and outcome.reason:
        detail["reason"] = outcome.reason
    if outcome.detail:
        detail["why"] = outcome.detail[:200]
    lifecycle.advance(turn.ids, ["received"], "processed", detail=detail)
    bot, conv, done = turn.bot, turn.conversation, outcome.completion
    usage.log_calls([usage.Call(
        conv["workspace_id"], conv["channel"], conv["id"], turn.ids[-1],
        model=bot.model if bot is not None and bot.provider == "openai" else None,
        outcome="error" if outcome.error else outcome.kind,
        prompt_tokens=done.prompt_tokens if done else None, completion_tokens=done.completion_tokens if done else None,
        total_tokens=done.total_tokens if done else None, tokens_estimated=done.estimated if done else False,
        latency_ms=done.latency_ms if done else None)])


# --- the reconciler's last resort ---------------------------------------------------------------

_STUCK = """
SELECT c.id, c.workspace_id, c.channel, c.address, c.status, c.context_after_id, c.ai_lease_token AS token
FROM conversation c
WHERE c.id IN (SELECT conversation_id FROM message WHERE id = ANY(%s) AND (status || '') = 'received' AND ai_lane IS NOT NULL)
FOR UPDATE
"""


def hand_off_stuck(ids: Sequence[int]) -> Followups:
    """Turns re-driven POSTROOM_AI_MAX_ATTEMPTS times without an answer: the customer gets the
    fallback message and the conversation goes to a person (``stuck``, by the reconciler). A
    conversation whose rows a live turn finished meanwhile is left alone."""
    followups = Followups()
    with _transaction():
        convs = fetch_dicts(_STUCK, (list(ids),))
        rows = fetch_dicts("SELECT id, conversation_id, body, to_addr, created_at, ai_lane, attempts, throttles, redrives,"
                           " content->>'subject' AS subject FROM message WHERE id = ANY(%s) AND (status || '') = 'received'"
                           " AND ai_lane IS NOT NULL ORDER BY id", (list(ids),))
        for conv in convs:
            turn = Turn(conv, [r for r in rows if r["conversation_id"] == conv["id"]])
            if not turn.rows:  # answered by a turn that committed while we waited for its lock
                continue
            turn.bot = load_bot(conv["workspace_id"], conv["channel"]) if conv["status"] == "bot" else None
            if turn.bot is None:
                lifecycle.advance(turn.ids, ["received"], "processed", detail={"ai": "skipped"})
            else:
                _hand_off(turn, Outcome("handoff", reason="stuck", error=True, by="reconciler",
                                        detail="re-driven too often without an answer"), followups)
            fetch("UPDATE conversation SET ai_lease_until = NULL, ai_lease_token = NULL WHERE id = %s", (conv["id"],))
    return followups
