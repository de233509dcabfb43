"""`make bench` runs on its own private stack and reports what it measured (here on a small count)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common.config import ROOT

# A campaign's progress by where its messages are; they add up to its total.
PROGRESS_STATES = ("pending", "processing", "sent", "delivered", "read", "failed", "suppressed", "cancelled")


def fresh_env(tmp_path: Path) -> dict[str, str]:
    """As on a fresh machine: none of this test session's servers or settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTROOM_", "TWILIO_", "DATABASE_", "REDIS_", "WHATSAPP_", "WAHA_", "SMTP_", "EMAIL_"))}
    env["POSTROOM_VAR_DIR"] = str(tmp_path / "var")
    return env


def test_bench_reports_measured_figures_for_every_scenario(tmp_path: Path):
    output = tmp_path / "bench.json"
    env = fresh_env(tmp_path)
    sections = [arg for section in ("idle", "sms", "lanes", "channels", "webhooks", "scheduling") for arg in ("--only", section)]
    result = subprocess.run([sys.executable, "-m", "tests.bench", *sections, "--count", "60", "--webhook-count", "60",
                             "--scheduling-count", "60", "--channel-count", "40", "--idle-seconds", "2", "--output", str(output)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(output.read_text())
    idle = report["idle"]  # measured with no traffic, per process group, as % of one core
    assert {"ingest", "processing", "routing", "sender-sms", "scheduler", "postgres", "redis", "sandbox"} <= set(idle["percent_of_one_core"])
    assert idle["goal_percent"] == 5.0 and idle["total_percent"] >= 0
    assert "idle cost: no traffic" in result.stdout and "(goal: total < 5 %)" in result.stdout
    assert [r["provider_latency_ms"] for r in report["results"]] == [0, 150]
    for r in report["results"]:
        assert r["sandbox_received"] == 60 and r["sent_or_delivered"] == 60 and r["duplicates_at_provider"] == 0
        assert r["api_requests_per_s"] > 0 and r["end_to_end_messages_per_s"] > 0
        assert 0 < r["accepted_to_sent_ms"]["p50"] <= r["accepted_to_sent_ms"]["p95"] <= r["accepted_to_sent_ms"]["p99"]
        assert {"ingest", "processing", "routing", "sender-sms", "postgres", "redis", "sandbox"} <= set(r["cpu_ms_per_message"])
    assert r["accepted_to_sent_ms"]["p50"] >= 150  # the provider's latency is inside accepted → sent
    assert "end-to-end messages/s" in result.stdout

    # One bulk batch per channel at 150 ms provider latency: every message sent once, CPU by process group.
    assert [r["channel"] for r in report["channels"]] == ["sms", "email", "whatsapp_cloud", "whatsapp_qr"]
    for r in report["channels"]:
        assert r["sent"] == r["sandbox_received"] == 40 and r["provider_latency_ms"] == 150, r
        assert r["end_to_end_messages_per_s"] > 0 and r["accepted_to_sent_ms"]["p50"] >= 150
        sender = {"sms": "sender-sms", "email": "sender-email", "whatsapp_cloud": "sender-whatsapp-cloud",
                  "whatsapp_qr": "sender-whatsapp-qr"}[r["channel"]]
        assert r["cpu_ms_per_message"][sender] > 0  # the channel's own sender did the work
    assert "bulk messages per channel" in result.stdout

    # The webhook campaign: 60 bulk messages without an endpoint, then with one subscribed to `*`.
    campaign = report["webhooks"]
    assert campaign["messages"] == 60 and campaign["provider_latency_ms"] == 150 and campaign["receiver_delay_ms"] == 100
    for run in (campaign["without_webhooks"], campaign["with_webhooks"]):
        assert run["sandbox_received"] == run["sent"] == run["delivered"] == 60
        assert run["end_to_end_messages_per_s"] > 0 and run["messages_sent_per_s"] > 0
    assert campaign["with_webhooks"]["cpu_ms_per_message"]["webhooks"] > 0  # the webhooks stage did the work
    assert {"ingest", "sender-sms", "webhooks", "postgres", "sandbox"} <= set(campaign["without_webhooks"]["cpu_ms_per_message"])
    assert isinstance(campaign["throughput_change_percent"], float)
    delivered = campaign["webhooks"]  # accepted, sent and delivered for each message, each once
    assert delivered["expected"] == delivered["delivered"] == delivered["received"] == 180
    assert delivered["missing"] == delivered["duplicates"] == delivered["not_2xx"] == delivered["unexpected"] == 0
    assert delivered["delivery_rows"] == {"succeeded": 180} and delivered["attempts"] == 180
    assert delivered["deliveries_per_s"] > 0 and delivered["without_event_time"] == 0
    lag = delivered["lag_ms"]  # receive time at the receiver minus the event's time in message_event
    assert 0 < lag["p50"] <= lag["p95"] <= lag["p99"] <= lag["max"]
    assert set(delivered["lag_ms_by_type"]) == {"message.accepted", "message.sent", "message.delivered"}
    assert len(delivered["lag_p50_ms_by_tenth"]) == 10
    assert delivered["call_ms"]["p50"] >= 100 and delivered["calls_in_flight_mean"] > 0  # the receiver answers after 100 ms
    assert "webhook deliveries received 180 of 180 expected: ok" in result.stdout

    # Scheduling: 60 messages due in the same second, run as bulk, bulk at 150 ms, urgent, bulk without delivery receipts.
    scheduling = report["scheduling"]
    assert scheduling["goal_p99_seconds"] == 0.5
    assert [(r["priority"], r["provider_latency_ms"], r["delivery_receipts"]) for r in scheduling["runs"]] == [
        ("bulk", 0, True), ("bulk", 150, True), ("urgent", 0, True), ("bulk", 0, False)]
    for r in scheduling["runs"]:
        assert r["posting_ended_before_due_s"] > 0 and r["stored_scheduled"] == r["sandbox_received"] == r["sent"] == 60
        assert r["duplicates_at_provider"] == r["missing"] == r["received_before_due"] == r["handed_on_before_due"] == 0
        lag = r["lag_ms"]  # the sandbox's receive time minus the due time
        assert 0 < lag["min"] <= lag["p50"] <= lag["p95"] <= lag["p99"] <= lag["max"]
        assert 0 <= r["handoff_lag_ms"]["p50"] <= r["handoff_lag_ms"]["p99"] < lag["p99"]  # handed on before received
        assert r["drain_s"] > 0 and r["drain_messages_per_s"] > 0
        assert {"scheduler", "processing", "routing", "sender-sms", "postgres", "sandbox"} <= set(r["cpu_ms_per_message"])
        assert r["goal"]["met"] == (lag["p99"] < 500) and r["goal"]["verdict"] in result.stdout
    assert scheduling["runs"][1]["lag_ms"]["min"] >= 150  # the provider's latency is inside the lag


def test_campaign_scenario_sends_every_recipient_once_through_the_lean_provider(tmp_path: Path):
    """The campaign scenario on its own stack, with 300 recipients: at 0 and 150 ms, measured and judged."""
    output = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "tests.bench", "--only", "campaign", "--campaign-count", "300",
                             "--bullmq-rate", "700", "--dramatiq-rate", "280", "--bullmq-cpu-ms", "2.43", "--output", str(output)],
                            cwd=ROOT, env=fresh_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    campaign = json.loads(output.read_text())["campaign"]
    assert campaign["imitation"] == "tests.bench.lean_provider" and campaign["settings"]["TWILIO_RATE_LIMIT_PER_SECOND"] == "0.0"
    assert [(r["provider_latency_ms"], r["suppressed"]["listed"]) for r in campaign["runs"]] == [(0, 0), (150, 0), (0, 30)]
    for r in campaign["runs"]:
        once, listed = r["exactly_once"], r["suppressed"]["listed"]  # the imitation got each sendable number and each probe once
        assert once["ok"] and once["expected"] == 300 - listed + r["urgent_probes"]["accepted"] and once["duplicates"] == once["missing"] == 0
        assert r["sent_rows"] == r["recorded_sent"] == 300 - listed and r["fan_out_s"] > 0 and r["end_to_end_messages_per_s"] > 0
        # the suppressed recipients ended suppressed, were counted so, and never reached the imitation
        assert r["suppressed"]["rows"] == r["suppressed"]["progress"] == listed and r["suppressed"]["reached_provider"] in (None, 0)
        assert sum(v for k, v in r["campaign_progress"].items() if k in PROGRESS_STATES) == 300
        assert r["urgent_probes"]["accepted"] >= 1 and r["urgent_probes"]["latency_s"]["p50"] > 0
        assert r["redis"]["message_ids"] > 0 and r["redis"]["bytes_per_queued_message"] > 0
        budget = r["write_budget"]
        assert budget["sql_statements_per_message"] > 0 and budget["sql_statements_unread_services"] == []
        assert budget["rows_written"]["message"]["ins"] >= 300 and budget["http_requests_per_message"]["provider"] == 1.0
        assert r["cpu_ms_per_message"]["sender-sms"] > 0 and r["cpu_ms_per_message_total"] > 0
        assert r["peak_rss"]["by_group"]["postgres"]["peak_mb"] > 0
    goals = {g["goal"]: g for g in campaign["goals"]}
    assert len(goals) == 12 and all(g["verdict"] in ("met", "MISSED") for g in goals.values())
    assert all(g["verdict"] in result.stdout for g in goals.values()) and "campaign goals" in result.stdout


def test_conversation_scenario_answers_every_inbound_message_and_reports_each_plan(tmp_path: Path):
    """The conversation scenario, small: 10 conversations of 2 messages each, every one answered by the
    AI stage through the sandbox's model; figures per plan, and whether premium led (reported, not judged here)."""
    output = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "tests.bench", "--only", "conversations", "--conversations", "10",
                             "--conversation-messages", "2", "--output", str(output)],
                            cwd=ROOT, env=fresh_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = json.loads(output.read_text())["conversations"]
    assert figures["inbound"] == figures["replies"] == 20 and figures["replies_per_s"] > 0
    assert set(figures["plans"]) == {"premium", "pro", "basic"} and isinstance(figures["premium_leads"], bool)
    assert "premium leads" in result.stdout
