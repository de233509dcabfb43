"""The README's quick start, as written: `postroom run` (what `make run` runs), a curl, a crashed
service restarted, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from common.config import ROOT
from services.local import infra as localinfra
from tests.support import wait_for


def test_make_run_quick_start_sends_an_sms_survives_a_killed_sender_and_ctrl_c_stops_everything(tmp_path: Path):
    api_port, sandbox_port = localinfra.free_port(), localinfra.free_port()
    env = {**{k: v for k, v in os.environ.items() if k not in ("SMTP_HOST", "SMTP_PORT")}, "POSTROOM_VAR_DIR": str(tmp_path / "var"), "DATABASE_URL": "", "REDIS_URL": "",
           "TWILIO_API_BASE": "", "POSTROOM_PUBLIC_URL": "", "POSTROOM_API_PORT": str(api_port),
           "POSTROOM_SANDBOX_PORT": str(sandbox_port), "POSTROOM_METRICS_PORT_BASE": str(24000 + os.getpid() % 1000),
           "POSTROOM_SANDBOX_SMTP_PORT": str(localinfra.free_port()), "WHATSAPP_API_BASE": "", "WAHA_API_BASE": "",
           "POSTROOM_WIDGET_PORT": str(localinfra.free_port()), "POSTROOM_API_WORKERS": "1"}
    log = open(tmp_path / "run.log", "w+")
    run = subprocess.Popen([str(Path(sys.executable).parent / "postroom"), "run"], cwd=ROOT, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Ctrl-C stops everything" in (tmp_path / "run.log").read_text(), timeout=90,
                 what="the run banner")
        banner = (tmp_path / "run.log").read_text()
        key = (tmp_path / "var" / "dev-api-key").read_text().strip()
        assert f"http://127.0.0.1:{api_port}" in banner and key in banner

        # The README's curl line, then its status check.
        api = f"http://127.0.0.1:{api_port}"
        sent = requests.post(f"{api}/v1/messages", headers={"Authorization": f"Bearer {key}"},
                             json={"channel": "sms", "to": "+15005550006", "body": "hello"}, timeout=10)
        assert sent.status_code == 202
        message_id = sent.json()["id"]
        wait_for(lambda: requests.get(f"{api}/v1/messages/{message_id}", headers={"Authorization": f"Bearer {key}"},
                                      timeout=10).json()["status"] == "delivered", timeout=20, what="delivered")
        events = requests.get(f"{api}/v1/messages/{message_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["events"]
        assert [e["status"] for e in events] == ["accepted", "queued", "routed", "sending", "sent", "delivered"]
        listed = requests.get(f"http://127.0.0.1:{sandbox_port}/sandbox/messages", timeout=10).json()["messages"]
        assert [(m["to"], m["body"]) for m in listed] == [("+15005550006", "hello")]

        # The README's CLI line: the private servers' URLs are in var/stack.env.
        stack_env = dict(line.split("=", 1) for line in (tmp_path / "var" / "stack.env").read_text().split())
        created = subprocess.run([str(Path(sys.executable).parent / "postroom"), "workspace", "create", "acme"],
                                 env={**env, **stack_env}, capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        assert requests.get(f"{api}/v1/messages/{message_id}", headers={"Authorization": f"Bearer {created.stdout.strip()}"},
                            timeout=10).status_code == 404  # a key of the new workspace, which sees none of dev's

        # kill -9 of the SMS sender: `postroom run` says so, restarts it, and the stack keeps sending.
        (sender,) = [p for p in psutil.Process(run.pid).children(recursive=True)
                     if p.cmdline()[-4:] == ["worker", "sms", "--lanes", "normal,bulk"]]
        sender.kill()
        wait_for(lambda: "service sender-sms exited with -9; restarting in 0.5s (restart 1)" in (tmp_path / "run.log").read_text(),
                 timeout=15, what="the restart line")
        again = requests.post(f"{api}/v1/messages", headers={"Authorization": f"Bearer {key}"},
                              json={"channel": "sms", "to": "+15005550006", "body": "after a crash"}, timeout=10).json()["id"]
        wait_for(lambda: requests.get(f"{api}/v1/messages/{again}", headers={"Authorization": f"Bearer {key}"},
                                      timeout=10).json()["status"] == "delivered", timeout=30, what="delivered after the restart")
        assert run.poll() is None

        everything = [p.pid for p in psutil.Process(run.pid).children(recursive=True)]
        run.send_signal(signal.SIGINT)  # Ctrl-C
        assert run.wait(60) == 0
        assert "stopped." in (tmp_path / "run.log").read_text()
        time.sleep(0.5)
        leftovers = [pid for pid in everything if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert leftovers == [], [psutil.Process(p).cmdline() for p in leftovers]
    finally:
        if run.poll() is None:  # a failed assertion above: still stop it the way a user would
            run.send_signal(signal.SIGINT)
            try:
                run.wait(60)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
