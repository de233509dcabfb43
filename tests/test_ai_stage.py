"""The AI stage in-process: real Dramatiq workers on the Redis broker, PostgreSQL, and the sandbox's
OpenAI imitation and Twilio. An inbound SMS in a ``bot`` conversation is answered from the
knowledge base, handed off (keyword, model, errors, quota) with a message the customer always
gets, retried on 429 and 5xx, and never sent over a person who took the conversation meanwhile —
neither by the stage's re-check nor, later, by the sender's claim."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

import services.processing.ai_actors  # noqa: F401  (declares the ai_* queues on the test broker)
from common import backlog, chatbots, conversations, dispatch, intake, knowledge, lifecycle, usage
from common.config import ROOT
from common.db.connection import db, fetch, fetch_dicts, release_connection, transaction
from common.inbound import Inbound, store
from common.providers.channels import CHANNELS
from common.providers.openai_chat import Completion
from services.processing import ai
from services.scheduler import ai_redrive
from services.senders import loop
from tests.support import running_workers, status_of, wait_for
from tests.test_worker import POSTROOM, start_worker

HANDOFF = "Thanks — a person will reply here shortly."
FALLBACK = "Sorry, I can't answer right now. A person will reply shortly."
HOURS = "We are open Monday to Friday from 9 am to 5 pm, and on Saturdays until noon."
REFUNDS = "Refunds are paid back to the original card within 5 working days."
OURS = "+15005550006"


def customer(n: int) -> str:
    return f"+1201555{150 + n:04d}"


@pytest.fixture
def openai(sandbox) -> Iterator[str]:
    """The sandbox's OpenAI imitation, fresh; its base URL."""
    requests.delete(f"{sandbox.url}/sandbox/openai", timeout=5).raise_for_status()
    with transaction():
        fetch("TRUNCATE usage_log, ai_reservation")
    yield f"{sandbox.url}/openai/v1"
    requests.delete(f"{sandbox.url}/sandbox/openai", timeout=5).raise_for_status()


def fault(sandbox, **spec: Any) -> None:
    requests.post(f"{sandbox.url}/sandbox/openai/faults", json=spec, timeout=5).raise_for_status()


def recorded(sandbox) -> list[dict[str, Any]]:
    return requests.get(f"{sandbox.url}/sandbox/openai/requests", timeout=5).json()["requests"]


def model_stats(sandbox) -> dict[str, Any]:
    return requests.get(f"{sandbox.url}/sandbox/openai/stats", timeout=5).json()


def set_up(workspace: dict, base_url: str, provider: str = "openai", plan: str = "basic", quota: int | None = None,
           **overrides: Any) -> None:
    """An SMS chatbot and a two-item knowledge base for the workspace."""
    fields = {"enabled": True, "provider": provider, "base_url": base_url if provider == "openai" else None,
              "model": "gpt-sandbox" if provider == "openai" else None, "product_name": "Acme", "guidelines": "Be brief.",
              "handoff_message": HANDOFF, "fallback_message": FALLBACK, "handoff_keywords": list(chatbots.HANDOFF_KEYWORDS),
              "temperature": 0.2, "max_tokens": 300, "timeout_seconds": 10.0, "language": "en", "min_score": 0.05,
              "min_margin": 0.01, "settings": {"json_mode": True}, **overrides}
    with transaction():
        chatbots.save(workspace["id"], "sms", fields, "sk-sandbox" if provider == "openai" else None)
        usage.set_plan(workspace["id"], plan, quota)
        knowledge.create(workspace["id"], {"title": "What are your opening hours?", "body": HOURS, "source_url": None,
                                           "tags": [], "language": "english"})
        knowledge.create(workspace["id"], {"title": "How do refunds work?", "body": REFUNDS, "source_url": None,
                                           "tags": [], "language": "english"})


def inbound(workspace: dict, sender: str, body: str, *, hand_on: bool = True) -> int:
    """A customer's SMS stored as a provider webhook stores it, and (by default) handed on."""
    n = abs(hash((sender, body))) % 10**12
    message = Inbound(workspace["id"], "sms", "twilio", f"SM{n:032d}", sender, OURS, body)
    with transaction():
        stored = store(message)
        assert stored is not None
        followups = conversations.after_store(message, stored)
    if hand_on:
        followups.hand_on()
    return stored


def row(message_id: int) -> dict[str, Any]:
    with transaction():
        return fetch_dicts("SELECT m.*, (SELECT detail FROM message_event e WHERE e.message_id = m.id ORDER BY e.id DESC"
                           " LIMIT 1) AS detail FROM message m WHERE id = %s", (message_id,))[0]


def conversation_of(message_id: int) -> dict[str, Any]:
    with transaction():
        return fetch_dicts("SELECT c.* FROM conversation c JOIN message m ON m.conversation_id = c.id WHERE m.id = %s",
                           (message_id,))[0]


def replies(conversation_id: int) -> list[dict[str, Any]]:
    with transaction():
        return fetch_dicts("SELECT id, author, body, priority, status, error_code FROM message WHERE conversation_id = %s"
                           " AND direction = 'outbound' ORDER BY id", (conversation_id,))


def calls(workspace_id: int) -> list[dict[str, Any]]:
    with transaction():
        return fetch_dicts("SELECT model, outcome, prompt_tokens, completion_tokens, total_tokens, tokens_estimated"
                           " FROM usage_log WHERE workspace_id = %s AND kind = 'ai_call' ORDER BY id", (workspace_id,))


def processed(message_id: int) -> bool:
    return row(message_id)["status"] == "processed"


def sent_to(sandbox, address: str) -> list[str]:
    return [m["body"] for m in sandbox.messages(to=address)]


def test_a_question_in_the_knowledge_base_is_answered_by_the_model_on_the_same_channel(workspace, sandbox, openai, broker):
    set_up(workspace, openai, plan="premium")
    with running_workers(broker):
        asked = inbound(workspace, customer(1), "When are you open on Saturdays? What are the opening hours?")
        wait_for(lambda: sent_to(sandbox, customer(1)), what="the answer at Twilio")

    assert sent_to(sandbox, customer(1)) == [HOURS]
    conv = conversation_of(asked)
    [reply] = replies(conv["id"])
    assert (reply["author"], reply["body"], reply["priority"]) == ("bot", HOURS, "urgent")  # premium replies ride urgent
    asked_row = row(asked)
    assert (asked_row["status"], asked_row["ai_lane"], asked_row["detail"]) == (
        "processed", "premium", {"ai": "answered", "reply_id": reply["id"]})
    assert conv["status"] == "bot" and conv["ai_lease_token"] is None
    [request] = recorded(sandbox)
    body = request["body"]
    assert set(body) == {"model", "messages", "temperature", "max_tokens", "stream", "n", "response_format"}
    assert "sk-sandbox" not in str(request) and "premium" not in str(body) and customer(1) not in str(body)
    [call] = calls(workspace["id"])
    assert call == {"model": "gpt-sandbox", "outcome": "answered", "tokens_estimated": False,
                    "prompt_tokens": request["usage"]["prompt_tokens"], "completion_tokens": request["usage"]["completion_tokens"],
                    "total_tokens": request["usage"]["total_tokens"]}
    # And once the reply is sent, its reserved quota counts as used
    wait_for(lambda: status_of(reply["id"]) in ("sent", "delivered"), what="the reply recorded as sent")
    assert ai_redrive.settle_quota() == 1
    with transaction():
        plan = usage.plan_of(workspace["id"])
    assert (plan["quota_used"], plan["quota_reserved"]) == (1, 0)


def test_a_burst_of_messages_is_one_turn_with_one_answer(workspace, sandbox, openai, broker):
    set_up(workspace, openai)
    first = inbound(workspace, customer(2), "Hello there", hand_on=False)
    second = inbound(workspace, customer(2), "how do refunds work on my card?", hand_on=False)

    with running_workers(broker):
        dispatch.to_stage("ai", "basic", [first, second])
        wait_for(lambda: processed(first) and processed(second), what="the turn answered")
        wait_for(lambda: sent_to(sandbox, customer(2)), what="the answer at Twilio")

    assert sent_to(sandbox, customer(2)) == [REFUNDS]
    assert len(recorded(sandbox)) == 1
    assert '"Hello there\\nhow do refunds work on my card?"' in recorded(sandbox)[0]["body"]["messages"][1]["content"]


def test_asking_for_a_person_hands_off_with_the_handoff_message_and_no_model_call(workspace, sandbox, openai, broker):
    set_up(workspace, openai)
    with running_workers(broker):
        asked = inbound(workspace, customer(3), "Can I talk to a HUMAN please")
        wait_for(lambda: sent_to(sandbox, customer(3)), what="the handoff message at Twilio")

    assert sent_to(sandbox, customer(3)) == [HANDOFF]
    conv = conversation_of(asked)
    assert (conv["status"], conv["status_reason"]) == ("open", "keyword")
    assert [r["author"] for r in replies(conv["id"])] == ["bot_handoff"]
    assert row(asked)["detail"] == {"ai": "handoff", "reason": "keyword", "reply_id": replies(conv["id"])[0]["id"]}
    assert recorded(sandbox) == []
    with transaction():
        events = fetch_dicts("SELECT status, previous, reason, by FROM conversation_event WHERE conversation_id = %s",
                             (conv["id"],))
    assert events == [{"status": "open", "previous": "bot", "reason": "keyword", "by": "bot"}]


def test_extractive_answers_verbatim_and_hands_off_what_it_cannot_answer(workspace, sandbox, openai, broker):
    set_up(workspace, openai, provider="extractive", min_score=0.05, min_margin=0.01)
    with running_workers(broker):
        answered = inbound(workspace, customer(4), "what are your opening hours")
        off_topic = inbound(workspace, customer(5), "Is the moon made of cheese?")
        wait_for(lambda: sent_to(sandbox, customer(4)) and sent_to(sandbox, customer(5)), what="both answers at Twilio")

    assert sent_to(sandbox, customer(4)) == [HOURS]
    assert sent_to(sandbox, customer(5)) == [HANDOFF]
    assert conversation_of(answered)["status"] == "bot"
    assert (conversation_of(off_topic)["status"], conversation_of(off_topic)["status_reason"]) == ("open", "low_confidence")
    assert [c["outcome"] for c in calls(workspace["id"])] == ["answered", "handoff"]
    assert all(c["model"] is None for c in calls(workspace["id"]))
    assert recorded(sandbox) == []


def test_an_exhausted_quota_hands_off_without_calling_the_model(workspace, sandbox, openai, broker):
    set_up(workspace, openai, quota=0)
    with running_workers(broker):
        asked = inbound(workspace, customer(6), "What are your opening hours?")
        wait_for(lambda: sent_to(sandbox, customer(6)), what="the handoff message")

    assert sent_to(sandbox, customer(6)) == [HANDOFF]
    assert conversation_of(asked)["status_reason"] == "quota"
    assert recorded(sandbox) == []


def test_insufficient_quota_at_the_model_gives_the_fallback_message_after_one_request(workspace, sandbox, openai, broker):
    set_up(workspace, openai)
    fault(sandbox, error="insufficient_quota", count=5)
    with running_workers(broker):
        asked = inbound(workspace, customer(7), "What are your opening hours?")
        wait_for(lambda: sent_to(sandbox, customer(7)), what="the fallback message")

    assert sent_to(sandbox, customer(7)) == [FALLBACK]
    assert (conversation_of(asked)["status"], conversation_of(asked)["status_reason"]) == ("open", "provider_error")
    assert len(recorded(sandbox)) == 1
    assert [c["outcome"] for c in calls(workspace["id"])] == ["error"]


def test_a_rate_limit_is_waited_out_for_its_retry_after_and_then_answered(workspace, sandbox, openai, broker):
    set_up(workspace, openai)
    fault(sandbox, error="rate_limit_exceeded", retry_after=1, count=1)
    with running_workers(broker):
        inbound(workspace, customer(8), "What are your opening hours?")
        wait_for(lambda: sent_to(sandbox, customer(8)), what="the answer after the 429")

    assert sent_to(sandbox, customer(8)) == [HOURS]
    first, second = recorded(sandbox)
    assert [first["status"], second["status"]] == [429, 200]
    from datetime import datetime
    gap = datetime.fromisoformat(second["arrived_at"]) - datetime.fromisoformat(first["arrived_at"])
    assert gap.total_seconds() >= 1.0


def test_server_errors_are_retried_then_answered(workspace, sandbox, openai, broker):
    set_up(workspace, openai)
    fault(sandbox, error="server_error", http_status=503, count=2)
    with running_workers(broker):
        asked = inbound(workspace, customer(9), "How do refunds work?")
        wait_for(lambda: sent_to(sandbox, customer(9)), timeout=20, what="the answer after two 503s")

    assert sent_to(sandbox, customer(9)) == [REFUNDS]
    assert [r["status"] for r in recorded(sandbox)] == [503, 503, 200]
    assert row(asked)["attempts"] == 2


def test_malformed_model_output_is_a_handoff(workspace, sandbox, openai, broker):
    set_up(workspace, openai)
    fault(sandbox, malformed="not_json")
    with running_workers(broker):
        asked = inbound(workspace, customer(10), "What are your opening hours?")
        wait_for(lambda: sent_to(sandbox, customer(10)), what="the handoff message")

    assert sent_to(sandbox, customer(10)) == [HANDOFF]
    assert conversation_of(asked)["status_reason"] == "malformed"


def test_a_person_taking_over_during_the_model_call_means_the_bot_sends_nothing(workspace, sandbox, openai, broker):
    set_up(workspace, openai)
    fault(sandbox, latency_ms=1500)
    with running_workers(broker):
        asked = inbound(workspace, customer(11), "What are your opening hours?")
        wait_for(lambda: model_stats(sandbox)["in_flight"] == 1, what="the model call in flight")
        conv = conversation_of(asked)
        with transaction():
            assert conversations.move(workspace["id"], conv["id"], ["bot"], "open", "api", "api") is not None
        wait_for(lambda: processed(asked), what="the turn to end")

    assert row(asked)["detail"] == {"ai": "superseded", "reason": "human_took_over"}
    assert replies(conv["id"]) == []
    assert [c["outcome"] for c in calls(workspace["id"])] == ["superseded"]
    with transaction():
        assert fetch("SELECT count(*) FROM ai_reservation")[0][0] == 0  # the reservation was given back


def test_a_conversation_taken_before_its_turn_is_skipped(workspace, sandbox, openai, broker):
    set_up(workspace, openai)
    asked = inbound(workspace, customer(12), "What are your opening hours?", hand_on=False)
    conv = conversation_of(asked)
    with transaction():
        conversations.move(workspace["id"], conv["id"], ["bot"], "open", "api", "api")

    with running_workers(broker):
        dispatch.to_stage("ai", "basic", [asked])
        wait_for(lambda: processed(asked), what="the turn skipped")

    assert row(asked)["detail"] == {"ai": "skipped"}
    assert recorded(sandbox) == [] and replies(conv["id"]) == []


def test_the_senders_claim_cancels_a_bot_reply_whose_conversation_a_person_took(workspace, sandbox, openai):
    set_up(workspace, openai)
    asked = inbound(workspace, customer(13), "What are your opening hours?", hand_on=False)
    conv = conversation_of(asked)
    # Given a bot reply and a handoff text, both routed and about to be claimed
    with transaction():
        inserted = [intake.insert(workspace["id"], {"channel": "sms", "to": customer(13), "from": OURS, "body": text,
                                                    "author": author, "conversation_id": conv["id"]}, None)
                    for author, text in (("bot", HOURS), ("bot_handoff", HANDOFF))]
        ids = [r["id"] for r in inserted if r is not None]
        lifecycle.advance(ids, ["accepted"], "routed")
        # When a person takes the conversation before the sender claims them
        conversations.move(workspace["id"], conv["id"], ["bot"], "open", "agent_reply", "agent")

    rows = loop.candidates(CHANNELS["sms"], ids)
    claimed = loop.claim(CHANNELS["sms"], rows, "normal")

    # Then the bot's reply is cancelled, never sent; the handoff text still goes
    assert [r["id"] for r in claimed] == [ids[1]]
    assert (status_of(ids[0]), row(ids[0])["error_code"]) == ("cancelled", "human_took_over")
    assert status_of(ids[1]) == "sending"


def test_the_reconciler_redrives_a_lost_turn_and_hands_off_one_that_never_moves(workspace, sandbox, openai, broker):
    set_up(workspace, openai, plan="pro")
    lost = inbound(workspace, customer(14), "What are your opening hours?", hand_on=False)
    stuck = inbound(workspace, customer(15), "How do refunds work?", hand_on=False)
    with transaction():
        fetch("UPDATE message SET status_changed_at = now() - interval '1 minute' WHERE id = ANY(%s)", ([lost, stuck],))
        fetch("UPDATE message SET redrives = 4 WHERE id = %s", (stuck,))

    done = ai_redrive.redrive(deadline_seconds=2, max_attempts=4)

    assert done == {"ai_redriven": 1, "ai_stuck": 1}
    assert broker.client.llen(f"{broker.namespace}:ai_pro") == 1
    assert row(stuck)["detail"] == {"ai": "error", "reason": "stuck", "why": "re-driven too often without an answer",
                                    "reply_id": replies(conversation_of(stuck)["id"])[0]["id"]}
    assert [(r["author"], r["body"]) for r in replies(conversation_of(stuck)["id"])] == [("bot_handoff", FALLBACK)]
    assert conversation_of(stuck)["status_reason"] == "stuck"
    assert ai_redrive.redrive(deadline_seconds=2, max_attempts=4) == {}  # the lost one is now held by the broker
    with running_workers(broker):
        wait_for(lambda: sent_to(sandbox, customer(14)), what="the re-driven turn answered")
    assert sent_to(sandbox, customer(14)) == [HOURS]


def test_the_backlog_counts_turns_waiting_per_plan_lane(workspace, sandbox, openai):
    set_up(workspace, openai, plan="premium")
    inbound(workspace, customer(16), "What are your opening hours?", hand_on=False)

    with transaction():
        figures = backlog.measure(workspace["id"])

    assert {lane for stage, lane in figures if stage == "ai"} == {"premium", "pro", "basic"}
    assert (figures["ai", "premium"].waiting, figures["ai", "basic"].waiting) == (1, 0)
    assert {q.queue for q in backlog.queue_lengths() if q.stage == "ai"} == {"ai_premium", "ai_pro", "ai_basic"}


def test_an_ai_worker_serves_only_plan_lanes_on_greenlets(tmp_path, broker):
    refused = subprocess.run([str(POSTROOM), "worker", "ai", "--lanes", "urgent"], cwd=ROOT, capture_output=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert refused.returncode == 2
    assert "the lanes of ai are premium, pro, basic" in refused.stderr.decode()

    proc, log = start_worker(tmp_path, "ai-premium", "ai", "--lanes", "premium")
    try:
        wait_for(lambda: "worker ai serving" in log.read_text() or proc.poll() is not None, timeout=60, what="the worker")
        assert "worker ai serving ai_premium (64 greenlets)" in log.read_text(), log.read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_conversation_the_bot_answered_twenty_times_in_an_hour_goes_to_a_person(workspace, sandbox, openai, broker):
    set_up(workspace, openai)
    asked = inbound(workspace, customer(17), "What are your opening hours?", hand_on=False)
    conv = conversation_of(asked)
    with transaction():  # given twenty bot replies in the last hour (another bot, or a mail loop, at the other end)
        for n in range(ai.MAX_REPLIES_PER_HOUR):
            intake.insert(workspace["id"], {"channel": "sms", "to": customer(17), "body": f"answer {n}", "author": "bot",
                                            "conversation_id": conv["id"]}, f"earlier-{n}")
        fetch("UPDATE message SET status = 'sent' WHERE conversation_id = %s AND direction = 'outbound'", (conv["id"],))

    with running_workers(broker):
        dispatch.to_stage("ai", "basic", [asked])
        wait_for(lambda: sent_to(sandbox, customer(17)), what="the handoff message")

    assert sent_to(sandbox, customer(17)) == [HANDOFF]
    assert conversation_of(asked)["status_reason"] == "reply_limit"
    assert recorded(sandbox) == []


# --- the stage's job in this process, with the model call replaced ------------------------------

def answered_by_model(text: str) -> Completion:
    return Completion(f'{{"reply": "{text}"}}', "stop", 10, 5, 15, False, 1)


def test_no_database_connection_is_held_during_the_model_call(workspace, sandbox, openai, monkeypatch):
    set_up(workspace, openai)
    asked = inbound(workspace, customer(20), "What are your opening hours?", hand_on=False)
    held: list[bool] = []

    def complete(base_url, api_key, request, timeout_seconds=None):
        held.append(not db.is_closed())  # this thread ran Tx A: its connection is back in the pool
        return answered_by_model(HOURS)

    monkeypatch.setattr(ai.openai_chat, "complete", complete)
    ai.answer_turns([asked], "basic")

    assert held == [False]
    assert row(asked)["detail"]["ai"] == "answered"


def test_each_turn_is_recorded_as_soon_as_its_own_call_returns(workspace, sandbox, openai, monkeypatch):
    set_up(workspace, openai)
    quick = inbound(workspace, customer(21), "What are your opening hours?", hand_on=False)
    slow = inbound(workspace, customer(22), "How do refunds work?", hand_on=False)
    seen: dict[str, bool] = {}

    def quick_recorded() -> bool:
        try:
            return processed(quick)
        finally:
            release_connection()

    def complete(base_url, api_key, request, timeout_seconds=None):
        if "refunds" in request["messages"][1]["content"]:  # the slow call returns once the quick turn is recorded
            deadline = time.monotonic() + 10
            while not (done := quick_recorded()) and time.monotonic() < deadline:
                time.sleep(0.05)
            seen["quick recorded first"] = done
            return answered_by_model(REFUNDS)
        return answered_by_model(HOURS)

    monkeypatch.setattr(ai.openai_chat, "complete", complete)
    ai.answer_turns([quick, slow], "basic")

    assert seen == {"quick recorded first": True}
    assert processed(quick) and processed(slow)


def test_a_lane_keeps_at_most_its_greenlets_model_calls_in_flight(workspace, sandbox, openai, monkeypatch):
    set_up(workspace, openai)
    asked = [inbound(workspace, customer(23 + n), "What are your opening hours?", hand_on=False) for n in range(3)]
    monkeypatch.setitem(ai._slots, "basic", threading.BoundedSemaphore(1))
    lock, in_flight, most = threading.Lock(), [0], [0]

    def complete(base_url, api_key, request, timeout_seconds=None):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.2)
        with lock:
            in_flight[0] -= 1
        return answered_by_model(HOURS)

    monkeypatch.setattr(ai.openai_chat, "complete", complete)
    ai.answer_turns(asked, "basic")

    assert most == [1]
    assert all(row(i)["detail"]["ai"] == "answered" for i in asked)


def test_a_turn_that_finds_no_free_call_slot_in_time_is_given_back_without_an_attempt(workspace, sandbox, openai, broker,
                                                                                     monkeypatch):
    set_up(workspace, openai)
    asked = inbound(workspace, customer(26), "What are your opening hours?", hand_on=False)
    busy = threading.BoundedSemaphore(1)
    busy.acquire()  # every slot of the lane is taken
    monkeypatch.setitem(ai._slots, "basic", busy)
    monkeypatch.setattr(ai, "slot_wait_seconds", lambda: 0.2)
    monkeypatch.setattr(ai.openai_chat, "complete", lambda *a, **k: pytest.fail("no slot, no call"))

    ai.answer_turns([asked], "basic")

    waiting = row(asked)
    assert (waiting["status"], waiting["attempts"], waiting["due_at"]) == ("received", 0, None)
    assert conversation_of(asked)["ai_lease_token"] is None
    with transaction():
        assert fetch("SELECT count(*) FROM ai_reservation")[0][0] == 0
    assert broker.client.llen(f"{broker.namespace}:ai_basic.DQ") == 1  # back shortly


def test_a_turn_whose_record_fails_gives_its_lease_back(workspace, sandbox, openai, monkeypatch):
    set_up(workspace, openai)
    asked = inbound(workspace, customer(27), "What are your opening hours?", hand_on=False)

    def broken(*args: Any) -> None:
        raise RuntimeError("the reply could not be stored")

    monkeypatch.setattr(ai.openai_chat, "complete", lambda *a, **k: answered_by_model(HOURS))
    monkeypatch.setattr(ai, "_answer", broken)
    ai.answer_turns([asked], "basic")

    assert row(asked)["status"] == "received"  # Tx B rolled back: the reconciler re-drives the turn
    assert conversation_of(asked)["ai_lease_token"] is None  # at once, not after the lease


def test_the_ai_stage_takes_small_batches(clean_db, broker):
    dispatch.to_stage("ai", "basic", list(range(1, 41)))

    assert broker.client.llen(f"{broker.namespace}:ai_basic") == 3  # 16 + 16 + 8: each batch well within its time limit


def test_a_parked_retry_is_handed_on_as_soon_as_it_falls_due(workspace, sandbox, openai, broker):
    set_up(workspace, openai, plan="pro")
    parked = inbound(workspace, customer(28), "What are your opening hours?", hand_on=False)
    fresh = inbound(workspace, customer(29), "How do refunds work?", hand_on=False)
    with transaction():  # a 429 asked for 12 s, which ran out a second ago; the other arrived 12 s ago
        fetch("UPDATE message SET status_changed_at = now() - interval '13 seconds', due_at = now() - interval '1 second'"
              " WHERE id = %s", (parked,))
        fetch("UPDATE message SET status_changed_at = now() - interval '12 seconds' WHERE id = %s", (fresh,))

    done = ai_redrive.redrive(deadline_seconds=30, max_attempts=4)

    assert done == {"ai_redriven": 1, "ai_stuck": 0}
    assert broker.client.llen(f"{broker.namespace}:ai_pro") == 1
    assert (row(parked)["redrives"], row(fresh)["redrives"]) == (0, 0)  # falling due is no re-drive
    assert ai_redrive.redrive(deadline_seconds=30, max_attempts=4) == {}


def test_a_stuck_handoff_leaves_alone_a_turn_that_finished_while_it_waited_for_the_lock(workspace, sandbox, openai):
    set_up(workspace, openai)
    asked = inbound(workspace, customer(30), "What are your opening hours?", hand_on=False)
    conv = conversation_of(asked)
    locked = threading.Event()
    failed: list[BaseException] = []

    def waiting_for_a_lock() -> bool:
        fetch("SELECT pg_stat_clear_snapshot()")
        return fetch("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()")[0][0] > 0

    def live_turn() -> None:  # a turn's Tx B: holds the conversation, then finishes its rows
        try:
            with transaction():
                fetch("SELECT 1 FROM conversation WHERE id = %s FOR UPDATE", (conv["id"],))
                locked.set()
                wait_for(waiting_for_a_lock, what="the stuck handoff waiting for the conversation")
                lifecycle.advance([asked], ["received"], "processed", detail={"ai": "answered"})
        except BaseException as exc:
            failed.append(exc)
        finally:
            locked.set()
            release_connection()

    thread = threading.Thread(target=live_turn)
    thread.start()
    assert locked.wait(10)
    followups = ai.hand_off_stuck([asked])
    thread.join(20)

    assert failed == []
    assert (followups.replies, replies(conv["id"])) == ([], [])
    assert conversation_of(asked)["status"] == "bot"
    assert row(asked)["detail"] == {"ai": "answered"}


def test_a_chatbots_own_timeout_is_capped_by_the_stage_timeout_the_lease_is_sized_for(workspace, sandbox, openai,
                                                                                          monkeypatch):
    set_up(workspace, openai, timeout_seconds=60.0)
    monkeypatch.setattr(ai, "settings", dataclasses.replace(ai.settings, postroom_ai_timeout_seconds=4.0))
    asked = inbound(workspace, customer(30), "What are your opening hours?", hand_on=False)
    timeouts: list[float | None] = []

    def complete(base_url, api_key, request, timeout_seconds=None):
        timeouts.append(timeout_seconds)
        return answered_by_model(HOURS)

    monkeypatch.setattr(ai.openai_chat, "complete", complete)
    ai.answer_turns([asked], "basic")

    assert timeouts == [4.0]
