"""Dead letters: a batch that failed past its retries is listed and can be replayed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from common import deadletters, dispatch
from common.db.connection import fetch, transaction
from tests.support import running_workers, status_of, wait_for


def postroom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ})


def test_dead_lettered_batch_is_listed_and_replay_delivers_it(workspace, sandbox, broker):
    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status)"
                           " VALUES (%s, 'sms', '+15005550006', 'second chance', 'routed') RETURNING id",
                           (workspace["id"],))[0][0]
    dispatch.to_stage("sms", "bulk", [message_id])
    # A worker gave up on it: Dramatiq moves a rejected message to the queue's dead-letter list.
    consumer = broker.consume("sms_bulk", prefetch=1, timeout=1000)
    fetched = next(m for m in consumer if m is not None)
    consumer.nack(fetched)
    consumer.close()

    listed = postroom("dead-letters", "list")
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(d["queue"], d["actor"], d["ids"]) for d in letters] == [("sms_bulk", "send_sms_bulk", [message_id])]
    assert postroom("dead-letters", "replay").returncode != 0  # says what to replay instead of guessing

    replayed = postroom("dead-letters", "replay", letters[0]["broker_message_id"])
    assert replayed.stdout.strip() == "replayed 1"
    assert deadletters.list_dead_letters(broker) == []
    with running_workers(broker):
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered after replay")
    assert [m["body"] for m in sandbox.messages()] == ["second chance"]
