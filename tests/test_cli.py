"""The ``postroom`` command as an operator runs it: a real process against the test database."""

from __future__ import annotations

import os
import subprocess
import sys

from common import apikeys
from common.crypto import unseal
from common.db.connection import fetch, transaction
from common.providers.accounts import sms_account


def postroom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ})


def test_migrate_is_idempotent(clean_db):
    result = postroom("migrate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "schema is up to date"


def test_workspace_create_prints_a_key_that_authenticates_for_that_workspace(clean_db):
    result = postroom("workspace", "create", "globex")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    with transaction():
        ws = apikeys.workspace_id_by_name("globex")
        assert ws is not None and apikeys.workspace_for(key) == ws
        stored = fetch("SELECT key_hash FROM api_key WHERE workspace_id = %s", (ws,))[0][0]
    assert key not in stored  # only the hash is kept
    again = postroom("workspace", "create", "globex")
    assert again.returncode != 0 and "already exists" in again.stderr


def test_apikey_create_adds_another_key_to_an_existing_workspace(clean_db):
    postroom("workspace", "create", "initech")
    result = postroom("apikey", "create", "--workspace", "initech")
    assert result.returncode == 0, result.stderr
    with transaction():
        assert apikeys.workspace_for(result.stdout.strip()) == apikeys.workspace_id_by_name("initech")
        assert fetch("SELECT count(*) FROM api_key")[0][0] == 2
    missing = postroom("apikey", "create", "--workspace", "nobody")
    assert missing.returncode != 0 and "no workspace" in missing.stderr


def test_channel_sms_stores_credentials_encrypted_and_the_sender_uses_them(clean_db):
    postroom("workspace", "create", "umbrella")
    result = postroom("channel", "sms", "--workspace", "umbrella", "--account-sid", "AC" + "1" * 32,
                      "--auth-token", "secret-token-123", "--from", "+15005550009", "--rate-limit", "5")
    assert result.returncode == 0, result.stderr
    with transaction():
        ws = apikeys.workspace_id_by_name("umbrella")
        sealed = bytes(fetch("SELECT credentials FROM channel_config WHERE workspace_id = %s", (ws,))[0][0])
        account = sms_account(ws)
    assert b"secret-token-123" not in sealed and unseal(sealed)["auth_token"] == "secret-token-123"
    assert (account.account_sid, account.sender, account.rate_limit_per_second) == ("AC" + "1" * 32, "+15005550009", 5.0)



def test_workspace_set_resend_unknown_switches_the_workspace_choice(clean_db):
    assert postroom("workspace", "create", "initech").returncode == 0
    result = postroom("workspace", "set", "initech", "--resend-unknown", "on")
    assert result.returncode == 0, result.stderr
    with transaction():
        assert fetch("SELECT resend_unknown FROM workspace WHERE name = 'initech'")[0][0] is True
    assert postroom("workspace", "set", "nobody", "--resend-unknown", "on").returncode != 0
