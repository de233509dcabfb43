"""The ``postroom`` command: migrations, workspaces, keys and provider accounts, the scheduler, local runs.

It sits above the stages because it starts them (``postroom scheduler``, ``postroom run``).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from common.config import settings
from services import campaign_cli
from services.worker import STAGE_MODULES


def _connect() -> None:
    from common.db.connection import connect_database

    if not settings.database_url:
        sys.exit("DATABASE_URL is not set. For the stack `make run` started: export $(cat var/stack.env)")
    connect_database(settings.database_url, max_connections=2)


def cmd_migrate(args: argparse.Namespace) -> None:
    from common.db.migrate import apply_migrations

    _connect()
    applied = apply_migrations()
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")


def cmd_workspace_create(args: argparse.Namespace) -> None:
    from common import apikeys
    from common.db.connection import transaction

    _connect()
    with transaction():
        if apikeys.workspace_id_by_name(args.name) is not None:
            sys.exit(f"workspace {args.name!r} already exists; use `postroom apikey create --workspace {args.name}`")
        key = apikeys.issue(apikeys.create_workspace(args.name))
    print(key)


def cmd_workspace_set(args: argparse.Namespace) -> None:
    """Per-workspace choices: what becomes of a send whose outcome is unknown where no look-up
    exists; which tag names identify a message (its natural key: a pending duplicate is refused);
    quiet hours, the workspace's time zone, and whether urgent messages wait for quiet hours too; its
    plan (its AI lane) and monthly bot-reply quota, which only an admin key may change over the API."""
    from common.db.connection import fetch, transaction
    from common.quiet_hours import QuietHours, parse_timezone

    chosen = {k: getattr(args, k) for k in ("resend_unknown", "unique_tags", "quiet_hours", "timezone", "quiet_hours_urgent",
                                            "plan", "ai_quota")}
    if all(v is None for v in chosen.values()):
        sys.exit("nothing to set: give --resend-unknown, --unique-tags, --quiet-hours, --timezone, --quiet-hours-urgent, "
                 "--plan or --ai-quota")
    quota = None if args.ai_quota in (None, "unlimited") else args.ai_quota
    if quota is not None and not (quota.isdigit() and int(quota) < 2**31):
        sys.exit("--ai-quota: bot replies a month, a whole number (0 or more), or unlimited")
    unique = None if args.unique_tags is None else [t.strip() for t in args.unique_tags.split(",") if t.strip()]
    if unique is not None and any(not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", t) for t in unique):
        sys.exit("--unique-tags: comma-separated tag names of letters, digits and _ . : - (empty to clear)")
    quiet = None if args.quiet_hours in (None, "", "off") else args.quiet_hours
    try:
        if quiet is not None:
            QuietHours.parse(quiet)
        if args.timezone is not None:
            parse_timezone(args.timezone)
    except ValueError as exc:
        sys.exit(str(exc))
    _connect()
    with transaction():
        changed = fetch(
            "UPDATE workspace SET resend_unknown = coalesce(%(resend)s, resend_unknown), unique_tags = coalesce(%(unique)s, unique_tags),"
            " quiet_hours = CASE WHEN %(set_quiet)s THEN %(quiet)s ELSE quiet_hours END, timezone = coalesce(%(tz)s, timezone),"
            " quiet_hours_urgent = coalesce(%(urgent)s, quiet_hours_urgent), plan = coalesce(%(plan)s, plan),"
            " ai_monthly_quota = CASE WHEN %(set_quota)s THEN %(quota)s::integer ELSE ai_monthly_quota END"
            " WHERE name = %(name)s"
            " RETURNING resend_unknown, unique_tags, quiet_hours, timezone, quiet_hours_urgent, plan, ai_monthly_quota",
            {"resend": None if args.resend_unknown is None else args.resend_unknown == "on", "unique": unique,
             "set_quiet": args.quiet_hours is not None, "quiet": quiet, "tz": args.timezone,
             "urgent": None if args.quiet_hours_urgent is None else args.quiet_hours_urgent == "on", "name": args.name,
             "plan": args.plan, "set_quota": args.ai_quota is not None, "quota": None if quota is None else int(quota)})
    if not changed:
        sys.exit(f"no workspace {args.name!r}")
    resend, tags, window, zone, urgent, plan, ai_quota = changed[0]
    print(f"{args.name}: resend_unknown={'on' if resend else 'off'} unique_tags={','.join(tags) or '(none)'} "
          f"quiet_hours={window or 'off'} timezone={zone} quiet_hours_urgent={'on' if urgent else 'off'} "
          f"plan={plan} ai_quota={'unlimited' if ai_quota is None else ai_quota}")


def cmd_apikey_create(args: argparse.Namespace) -> None:
    from common import apikeys
    from common.db.connection import transaction

    scopes = tuple(dict.fromkeys(s.strip() for s in args.scopes.split(",") if s.strip()))
    unknown = apikeys.unknown_scopes(scopes)
    if unknown or not scopes:
        sys.exit(f"unknown scope {', '.join(unknown) or '(none given)'}; choose from {', '.join(apikeys.SCOPES)}")
    _connect()
    with transaction():
        ws = apikeys.workspace_id_by_name(args.workspace)
        if ws is None:
            sys.exit(f"no workspace {args.workspace!r}")
        print(apikeys.issue(ws, scopes))


def cmd_channel_sms(args: argparse.Namespace) -> None:
    """Give a workspace its own Twilio account for SMS (credentials encrypted at rest)."""
    from common import apikeys
    from common.db.connection import transaction

    _connect()
    creds = {"account_sid": args.account_sid, "auth_token": args.auth_token}
    if args.api_base:
        creds["api_base"] = args.api_base
    with transaction():
        ws = apikeys.workspace_id_by_name(args.workspace)
        if ws is None:
            sys.exit(f"no workspace {args.workspace!r}")
        _save_channel(ws, "sms", "twilio", args.account_sid, creds, args.from_, args.rate_limit)
    print(f"workspace {args.workspace!r} sends SMS from {args.from_} through Twilio account {args.account_sid}"
          + (f" at most {args.rate_limit:g}/s" if args.rate_limit else ""))


def _save_channel(workspace_id: int, channel: str, provider: str, account_ref: str, credentials: dict,
                  identity: str, rate_limit: float) -> None:
    """Create or replace the workspace's configuration of ``channel`` (inside a transaction)."""
    from common.providers import config as channel_config

    channel_config.save(workspace_id, channel, provider, account_ref, credentials, identity, rate_limit)


def cmd_channel_http(args: argparse.Namespace) -> None:
    """Deliver this workspace's ``http`` channel messages to URL, signed with a new secret (printed once)."""
    from common import apikeys, signing
    from common.db.connection import transaction
    from common.netguard import parse_networks, vet_url

    try:
        vet_url(args.url, parse_networks(settings.postroom_webhook_allowed_networks))
    except ValueError as exc:  # BlockedAddress is one
        sys.exit(f"url refused: {exc}")
    _connect()
    secret = signing.new_secret()
    with transaction():
        ws = apikeys.workspace_id_by_name(args.workspace)
        if ws is None:
            sys.exit(f"no workspace {args.workspace!r}")
        _save_channel(ws, "http", "http", f"ws{ws}", {"secret": secret}, args.url, args.rate_limit)
    print(secret)
    print(f"workspace {args.workspace!r} delivers http channel messages to {args.url}, signed with the secret above"
          + (f", at most {args.rate_limit:g}/s" if args.rate_limit else ""), file=sys.stderr)


def cmd_dead_letters(args: argparse.Namespace) -> None:
    """List Dramatiq's dead-lettered broker messages, or replay them."""
    import json

    from common import deadletters
    from common.broker import broker

    if args.action == "replay":
        if not args.all and not args.ids:
            sys.exit("name the broker message ids to replay, or pass --all")
        print(f"replayed {deadletters.replay(broker, None if args.all else args.ids)}")
        return
    letters = deadletters.list_dead_letters(broker)
    for letter in letters:
        print(json.dumps(letter.as_dict()))
    if not letters:
        print("no dead letters", file=sys.stderr)


def cmd_devkey(args: argparse.Namespace) -> None:
    """Ensure the `dev` workspace exists and ``args.file`` holds a valid key for it."""
    from pathlib import Path

    from common import apikeys
    from common.db.connection import transaction

    _connect()
    path = Path(args.file)
    with transaction():
        ws = apikeys.workspace_id_by_name("dev") or apikeys.create_workspace("dev")
        key = path.read_text().strip() if path.exists() else ""
        if not key or apikeys.workspace_for(key) != ws:
            key = apikeys.issue(ws)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(key + "\n")
    print(key)


def cmd_scheduler(args: argparse.Namespace) -> None:
    from services.scheduler.main import main

    main()


def cmd_worker(args: argparse.Namespace) -> None:
    from services.worker import run

    sys.exit(run(args.stage, args.lanes, args.threads))


def cmd_widget(args: argparse.Namespace) -> None:
    from services.widget.main import main as serve

    serve(args.port, args.bind)


def cmd_run(args: argparse.Namespace) -> None:
    from services.local.stack import run_forever

    run_forever()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=settings.postroom_log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(prog="postroom", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    ws = sub.add_parser("workspace", help="manage workspaces").add_subparsers(dest="action", required=True)
    create = ws.add_parser("create", help="create a workspace and print its first API key")
    create.add_argument("name")
    create.set_defaults(func=cmd_workspace_create)
    settings_ = ws.add_parser("set", help="change a workspace's settings")
    settings_.add_argument("name")
    settings_.add_argument("--resend-unknown", choices=("on", "off"), default=None,
                           help="where a provider offers no look-up, resend a message whose outcome is unknown (on) or fail it as outcome_unknown (off, the default)")
    settings_.add_argument("--unique-tags", default=None,
                           help="comma-separated tag names whose values identify a message, e.g. event_id,contractor_id,message_type "
                                "(a second pending message with the same values is refused, 409); empty to clear")
    settings_.add_argument("--quiet-hours", default=None,
                           help="local window when nothing non-urgent is sent, e.g. 21:00-08:00 (off to clear); held messages go when it ends")
    settings_.add_argument("--timezone", default=None,
                           help="IANA zone for quiet hours when the recipient's number pins none down (default UTC)")
    settings_.add_argument("--quiet-hours-urgent", choices=("on", "off"), default=None,
                           help="urgent messages wait for quiet hours too (off: they go at once, the default)")
    settings_.add_argument("--plan", choices=("basic", "pro", "premium"), default=None,
                           help="the workspace's plan: its AI stage lane (premium answers first; default basic)")
    settings_.add_argument("--ai-quota", default=None, metavar="N|unlimited",
                           help="bot replies a month (counted when sent; an exhausted quota hands off to a person)")
    settings_.set_defaults(func=cmd_workspace_set)
    keys = sub.add_parser("apikey", help="manage API keys").add_subparsers(dest="action", required=True)
    issue = keys.add_parser("create", help="print a new API key for a workspace")
    issue.add_argument("--workspace", required=True)
    issue.add_argument("--scopes", default="messages:write,messages:read",
                       help="comma-separated: messages:write, messages:read, webhooks:write, webhooks:read, admin (default: messages:write,messages:read)")
    issue.set_defaults(func=cmd_apikey_create)
    channel = sub.add_parser("channel", help="configure a workspace's provider accounts").add_subparsers(dest="action", required=True)
    sms = channel.add_parser("sms", help="send this workspace's SMS through its own Twilio account")
    sms.add_argument("--workspace", required=True)
    sms.add_argument("--account-sid", required=True)
    sms.add_argument("--auth-token", required=True)
    sms.add_argument("--from", dest="from_", required=True, help="sender number, E.164")
    sms.add_argument("--rate-limit", type=float, default=0.0, help="messages per second for this account (0: no limit)")
    sms.add_argument("--api-base", default="", help="Twilio API base URL (default: TWILIO_API_BASE)")
    sms.set_defaults(func=cmd_channel_sms)
    http = channel.add_parser("http", help="deliver this workspace's http channel messages to its own URL (prints the signing secret)")
    http.add_argument("--workspace", required=True)
    http.add_argument("--url", required=True, help="http(s) URL that receives each message as a signed POST")
    http.add_argument("--rate-limit", type=float, default=0.0, help="messages per second to the URL (0: no limit)")
    http.set_defaults(func=cmd_channel_http)
    dead = sub.add_parser("dead-letters", help="inspect or replay broker messages that failed past their retries")
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("ids", nargs="*", help="broker message ids to replay (see list)")
    dead.add_argument("--all", action="store_true", help="replay every dead letter")
    dead.set_defaults(func=cmd_dead_letters)
    devkey = sub.add_parser("devkey", help="ensure the `dev` workspace and a valid key in FILE (used by make run)")
    devkey.add_argument("--file", default=str(settings.var_dir / "dev-api-key"))
    devkey.set_defaults(func=cmd_devkey)
    sub.add_parser("scheduler", help="run the scheduler loop (reconciler)").set_defaults(func=cmd_scheduler)
    worker = sub.add_parser("worker", help="run a stage's actors: one Dramatiq worker per lane in this process")
    worker.add_argument("stage", choices=list(STAGE_MODULES),
                        help="the stage whose queues <stage>_<lane> to consume (a sender stage runs greenlets, not threads)")
    worker.add_argument("--lanes", default=None, help="comma-separated lanes to serve (default: all, e.g. urgent,bulk)")
    worker.add_argument("--threads", type=int, default=None,
                        help="threads (greenlets) per lane (default: POSTROOM_WORKER_THREADS; a sender's "
                             "POSTROOM_SENDER_URGENT_GREENLETS / POSTROOM_SENDER_GREENLETS)")
    worker.set_defaults(func=cmd_worker)
    widget = sub.add_parser("widget", help="serve the web chat widget (gunicorn, gevent): the page, visitors, event streams")
    widget.add_argument("--port", type=int, default=None, help="port (default: POSTROOM_WIDGET_PORT)")
    widget.add_argument("--bind", default=None, help="HOST:PORT to listen on, instead of POSTROOM_WIDGET_HOST and the port")
    widget.set_defaults(func=cmd_widget)
    campaign_cli.add_commands(sub)
    sub.add_parser("run", help="start the whole pipeline locally (make run); restarts services that exit").set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
