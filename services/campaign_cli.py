"""``postroom campaign watch ID`` and ``postroom campaign send FILE.csv``: a campaign's progress as
a live bar in the terminal, from the API (``GET /v1/campaigns/{id}``), with tqdm.

They talk to the HTTP API like any client, with an API key: ``--key``, else ``POSTROOM_API_KEY``,
else the development key ``make run`` wrote (``var/dev-api-key``). The API is ``--api``, else
``POSTROOM_API_URL``, else this machine's ingest (``POSTROOM_API_HOST``:``POSTROOM_API_PORT``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from common.config import settings

FINISHED = ("completed", "cancelled")
TIMEOUT = 30.0


def api_url(args: argparse.Namespace) -> str:
    return (args.api or os.environ.get("POSTROOM_API_URL") or f"http://{settings.postroom_api_host}:{settings.postroom_api_port}").rstrip("/")


def api_key(args: argparse.Namespace) -> str:
    key = args.key or os.environ.get("POSTROOM_API_KEY")
    dev = Path(settings.postroom_var_dir) / "dev-api-key"
    if not key and dev.exists():
        key = dev.read_text().strip()
    if not key:
        sys.exit("no API key: give --key, or set POSTROOM_API_KEY")
    return key


def _call(method: str, url: str, key: str, **kwargs: Any) -> dict[str, Any]:
    try:
        answer = requests.request(method, url, headers={"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})},
                                  timeout=TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        sys.exit(f"{method} {url}: {exc}")
    body = answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else {}
    if answer.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        sys.exit(f"{method} {url}: {answer.status_code} {error.get('message') or answer.text[:300]}")
    return body


def describe(view: dict[str, Any]) -> str:
    p = view["progress"]
    return (f"sent {p['sent']:,} delivered {p['delivered']:,} read {p['read']:,} failed {p['failed']:,} "
            f"suppressed {p['suppressed']:,} pending {p['pending']:,} · {p['send_rate_per_second']:g}/s")


def watch(api: str, key: str, campaign_id: int, every: float = 0.5, out: Any = None) -> dict[str, Any]:
    """Draw the campaign's progress until it completes or is cancelled; returns its last view.
    The bar counts messages done sending (total minus pending and in flight)."""
    view = _call("GET", f"{api}/v1/campaigns/{campaign_id}", key)
    with tqdm(total=view["progress"]["total"], unit="msg", desc=f"{view['name']} [{view['status']}]",
              file=out or sys.stderr, dynamic_ncols=True) as bar:
        while True:
            p = view["progress"]
            bar.total = p["total"]
            bar.n = p["total"] - p["pending"] - p["processing"]
            bar.set_description(f"{view['name']} [{view['status']}]", refresh=False)
            bar.set_postfix_str(describe(view), refresh=False)
            bar.refresh()
            if view["status"] in FINISHED:
                return view
            time.sleep(every)
            view = _call("GET", f"{api}/v1/campaigns/{campaign_id}", key)


def cmd_watch(args: argparse.Namespace) -> None:
    view = watch(api_url(args), api_key(args), args.id, args.every)
    print(f"campaign {view['id']} {view['status']}: {describe(view)}")


def cmd_send(args: argparse.Namespace) -> None:
    """Create a campaign from a CSV of recipients (a header naming ``to`` or ``contact_id``, the
    other columns variables), start it and watch it."""
    api, key = api_url(args), api_key(args)
    path = Path(args.file)
    if not path.is_file():
        sys.exit(f"{path}: no such file")
    content: dict[str, Any] = {"name": args.name or path.stem, "channel": args.channel, "priority": args.priority}
    if args.template is not None:
        content["template_id"] = args.template
    if args.body is not None:
        content["body"] = args.body
    if args.rate is not None:
        content["rate_limit_per_second"] = args.rate
    if args.send_at is not None:
        content["send_at"] = args.send_at
    created = _call("POST", f"{api}/v1/campaigns", key, json=content)
    added = _call("POST", f"{api}/v1/campaigns/{created['id']}/recipients/csv", key, data=path.read_bytes(),
                  headers={"Content-Type": "text/csv"})
    print(f"campaign {created['id']}: {added['added']:,} recipients", file=sys.stderr)
    _call("POST", f"{api}/v1/campaigns/{created['id']}/start", key)
    if args.no_watch:
        print(created["id"])
        return
    view = watch(api, key, created["id"], args.every)
    print(f"campaign {view['id']} {view['status']}: {describe(view)}")


def add_commands(sub: Any) -> None:
    campaign = sub.add_parser("campaign", help="send and watch campaigns through the API").add_subparsers(dest="action", required=True)
    for name, helptext in (("watch", "show a campaign's progress as a live bar until it finishes"),
                           ("send", "create a campaign from a CSV of recipients, start it and watch it")):
        p = campaign.add_parser(name, help=helptext)
        p.add_argument("--api", help="the ingest API's base URL (default: POSTROOM_API_URL, else this machine's)")
        p.add_argument("--key", help="an API key (default: POSTROOM_API_KEY, else make run's development key)")
        p.add_argument("--every", type=float, default=0.5, help="seconds between reads of the progress")
        if name == "watch":
            p.add_argument("id", type=int)
            p.set_defaults(func=cmd_watch)
            continue
        p.add_argument("file", help="CSV: a header naming to (or contact_id) and the template's variables, a row per recipient")
        p.add_argument("--template", type=int, help="the id of the template to send (POST /v1/templates)")
        p.add_argument("--body", help="the text to send instead of a template")
        p.add_argument("--channel", default="sms")
        p.add_argument("--name", help="the campaign's name (default: the file's)")
        p.add_argument("--priority", default="bulk", choices=("urgent", "normal", "bulk"))
        p.add_argument("--rate", type=float, help="the campaign's own rate limit, messages per second")
        p.add_argument("--send-at", help="start at this time (RFC 3339)")
        p.add_argument("--no-watch", action="store_true", help="print the campaign's id and return")
        p.set_defaults(func=cmd_send)
