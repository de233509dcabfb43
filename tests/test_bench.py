"""`make bench` runs on its own private stack and reports what it measured (here on a small count)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common.config import ROOT


def test_bench_reports_measured_figures_for_every_scenario(tmp_path: Path):
    output = tmp_path / "bench.json"
    # As on a fresh machine: none of this test session's servers or settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTROOM_", "TWILIO_", "DATABASE_", "REDIS_"))}
    env["POSTROOM_VAR_DIR"] = str(tmp_path / "var")
    result = subprocess.run([sys.executable, "-m", "tests.bench", "--count", "60", "--idle-seconds", "2", "--output", str(output)],
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
