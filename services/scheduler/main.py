"""The scheduler process: a loop that runs the reconciler's passes every interval.

It is a plain process rather than an actor because it must keep running when the broker has
lost everything; several replicas may run (their row claims skip each other's locks).
"""

from __future__ import annotations

import logging
import signal
import threading

from common import broker as _broker  # noqa: F401  (installs the broker and database)
from common import lifecycle, metrics
from common.config import settings
from common.db.connection import DatabaseUnavailable, release_connection
from services.scheduler import reconciler, webhooks

log = logging.getLogger("postroom.scheduler")
METRICS_PORT_OFFSET = 9  # worker services take the ports before it in local runs


def run_once() -> dict[str, int]:
    """One pass of every reconciler duty; returns what each did."""
    done = dict(reconciler.redrive_stuck(settings.postroom_stage_deadline_seconds, settings.postroom_max_redrives))
    done["promoted"] = reconciler.promote_parked(lifecycle.SHORT_WAIT_SECONDS)
    done.update(reconciler.resolve_unknown(settings.postroom_sending_timeout_seconds))
    done["receipts"] = reconciler.sweep_receipts()
    done.update(webhooks.maintain())
    return {k: v for k, v in done.items() if v}


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    metrics.serve(settings.postroom_metrics_port_base + METRICS_PORT_OFFSET, settings.postroom_metrics_host)
    log.info("scheduler started: reconciling every %.1fs", settings.postroom_reconcile_interval_seconds)
    while not stop.is_set():
        try:
            done = run_once()
            if done:
                log.info("reconciled %s", done)
        except DatabaseUnavailable as exc:  # its connection is discarded: the next pass reconnects
            log.warning("reconciler pass skipped: %s", exc)
        except Exception:  # keep the loop alive through a broker outage or a bug in one duty
            log.exception("reconciler pass failed; retrying next interval")
        finally:
            release_connection()
        stop.wait(settings.postroom_reconcile_interval_seconds)
    log.info("scheduler stopped")
