"""`make chaos` in small: every scenario, 150 messages each, against a private stack of real processes.

The same harness as ``python -m tests.chaos`` (workers SIGKILLed, the webhooks stage among them,
Redis flushed and restarted, PostgreSQL restarted and frozen, a provider failing, throttling,
timing out and cutting connections), with short faults so the whole run takes a few minutes.
Every message accepted by the API must reach the provider exactly once, and every sent, delivered
or failed step of it must reach the run's webhook endpoint at least once; while PostgreSQL is out
the API answers every request within 5 s, refusing with 503 and Retry-After; while Redis is out it
keeps accepting.
"""

from __future__ import annotations

import pytest

from tests.chaos.outcome import Row
from tests.chaos.report import COLUMNS, table
from tests.chaos.runner import run_chaos
from tests.chaos.scenarios import SCENARIOS, Params

NO_LOOKUP = {"email"}  # the channel whose provider cannot be asked whether it has a message
SMALL = Params(messages=150, spread_seconds=5, fault_at=1.5, kill_every=2, kill_seconds=6, down_seconds=2,
               freeze_seconds=8, provider_seconds=8, settle_seconds=60, quiet_seconds=2)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Row]:
    produced = run_chaos(SMALL, list(SCENARIOS), tmp_path_factory.mktemp("chaos") / "stack", echo=False)
    print("\n" + table(produced))
    return {row.scenario.split(":")[0]: row for row in produced}


def test_every_scenario_produces_a_row_of_the_table(rows: dict[str, Row]) -> None:
    lines = table(list(rows.values())).splitlines()

    assert list(rows) == list(SCENARIOS)
    assert [cell.strip() for cell in lines[0].split("|")] == list(COLUMNS)
    assert [line.split(":")[0] for line in lines[2:2 + len(rows)]] == list(SCENARIOS)
    assert all(row.messages == row.posted == SMALL.messages for row in rows.values()), "\n".join(lines)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_accepted_message_reaches_the_provider_exactly_once(rows: dict[str, Row], scenario: str) -> None:
    row = rows[scenario]

    assert (row.lost, row.duplicates) == (0, 0), table([row])
    # Every message was delivered once, except that a channel whose provider offers no look-up
    # (email: a sender killed after DATA) reports an unknown outcome instead of guessing.
    assert row.delivered_once + row.unknown == row.messages, table([row])
    assert set(row.unknown_by_channel) <= NO_LOOKUP, table([row])
    assert row.recovery_seconds is not None, table([row])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_sent_delivered_or_failed_step_reaches_the_webhook_endpoint(rows: dict[str, Row], scenario: str) -> None:
    row = rows[scenario]

    # Each of the messages was at least sent or failed, so each owes the endpoint one event or more.
    assert row.webhooks_expected >= row.messages, table([row])
    assert row.webhooks_lost == 0, table([row])
    assert row.webhooks_settle_seconds is not None, table([row])


@pytest.mark.parametrize("scenario", ["pg-restart", "pg-freeze"])
def test_api_answers_within_5_seconds_with_retry_after_while_postgres_is_out(rows: dict[str, Row], scenario: str) -> None:
    row = rows[scenario]

    assert row.api_calls_during_fault > 0, table([row])
    assert row.api_slowest_seconds <= 5.0, table([row])
    assert row.api_statuses.get("503", 0) > 0 and row.api_503_without_retry_after == 0, table([row])


@pytest.mark.parametrize("scenario", ["flush", "redis-restart"])
def test_api_keeps_accepting_while_redis_is_flushed_or_down(rows: dict[str, Row], scenario: str) -> None:
    row = rows[scenario]

    assert row.api_calls_during_fault > 0 and set(row.api_statuses) == {"202"}, table([row])
