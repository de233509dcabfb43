"""The ``postroom`` command: migrations, workspaces and keys, the scheduler, and local runs."""

from __future__ import annotations

import argparse
import logging
import sys

from common.config import settings


def _connect() -> None:
    from common.db.connection import connect_database

    if not settings.database_url:
        sys.exit("DATABASE_URL is not set (`make run` sets it for the services it starts)")
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


def cmd_apikey_create(args: argparse.Namespace) -> None:
    from common import apikeys
    from common.db.connection import transaction

    _connect()
    with transaction():
        ws = apikeys.workspace_id_by_name(args.workspace)
        if ws is None:
            sys.exit(f"no workspace {args.workspace!r}")
        print(apikeys.issue(ws))


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


def cmd_run(args: argparse.Namespace) -> None:
    from common.localrun import run_forever

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
    keys = sub.add_parser("apikey", help="manage API keys").add_subparsers(dest="action", required=True)
    issue = keys.add_parser("create", help="print a new API key for a workspace")
    issue.add_argument("--workspace", required=True)
    issue.set_defaults(func=cmd_apikey_create)
    devkey = sub.add_parser("devkey", help="ensure the `dev` workspace and a valid key in FILE (used by make run)")
    devkey.add_argument("--file", default=str(settings.var_dir / "dev-api-key"))
    devkey.set_defaults(func=cmd_devkey)
    sub.add_parser("scheduler", help="run the scheduler loop (reconciler)").set_defaults(func=cmd_scheduler)
    sub.add_parser("run", help="start the whole pipeline locally (make run)").set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
