"""The scheduler process: a loop that runs the reconciler's passes every interval.

It is a plain process rather than an actor because it must keep running when the broker has
lost everything; several replicas may run (their row claims skip each other's locks).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from common import broker as _broker  # noqa: F401  (installs the broker and database)
from common import campaigns, intake, lifecycle, metrics
from common.config import settings
from common.db.connection import DatabaseUnavailable, release_connection
from common.db.listen import Listener
from services.scheduler import ai_redrive, backlog, reconciler, recurring, retention, webhooks

log = logging.getLogger("postroom.scheduler")
METRICS_PORT_OFFSET = 9  # worker services take the ports before it in local runs


MIN_WAIT_SECONDS = 0.005


def due_now() -> dict[str, int]:
    """The duties that keep scheduled sends on time: materialise recurring occurrences, hand due
    scheduled messages to processing."""
    return {"occurrences": recurring.materialise(recurring.HORIZON_SECONDS),
            "scheduled": reconciler.promote_scheduled(settings.postroom_stage_deadline_seconds)}


def run_once() -> dict[str, int]:
    """One pass of every reconciler duty; returns what each did."""
    done = due_now()
    done.update(reconciler.redrive_stuck(settings.postroom_stage_deadline_seconds, settings.postroom_max_redrives))
    done["promoted"] = reconciler.promote_parked(lifecycle.SHORT_WAIT_SECONDS)
    done.update(reconciler.resolve_unknown(settings.postroom_sending_timeout_seconds))
    done["receipts"] = reconciler.sweep_receipts()
    done.update(webhooks.maintain())
    done.update(ai_redrive.redrive(settings.postroom_stage_deadline_seconds, settings.postroom_ai_max_attempts))
    done["ai_quota_settled"] = ai_redrive.settle_quota()
    done.update(retention.clean_up())
    done.update({f"campaigns_{k}": v for k, v in campaigns.tick().items()})
    backlog.measure()  # gauges only, every few seconds: nothing to report
    return {k: v for k, v in done.items() if v}


def main() -> None:
    """Every duty each interval; in between, wake exactly when the next scheduled message falls
    due, or when ingest stores one due sooner (LISTEN), so scheduled sends leave on time."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    metrics.serve(settings.postroom_metrics_port_base + METRICS_PORT_OFFSET, settings.postroom_metrics_host)
    interval = settings.postroom_reconcile_interval_seconds
    log.info("scheduler started: reconciling every %.1fs, waking for scheduled sends", interval)
    listener = Listener(intake.SCHEDULED_CHANNEL, "postroom-scheduler-listen")
    next_pass = 0.0
    while not stop.is_set():
        wait = interval
        try:
            if time.monotonic() >= next_pass:
                next_pass = time.monotonic() + interval
                done = run_once()
            else:
                done = due_now()
            if any(done.values()):
                log.info("reconciled %s", {k: v for k, v in done.items() if v})
            due_in = reconciler.next_scheduled_in()
            wait = max(0.0, next_pass - time.monotonic())
            if due_in is not None:
                wait = min(wait, due_in)
        except DatabaseUnavailable as exc:  # its connection is discarded: the next pass reconnects
            log.warning("reconciler pass skipped: %s", exc)
        except Exception:  # keep the loop alive through a broker outage or a bug in one duty
            log.exception("reconciler pass failed; retrying next interval")
        finally:
            release_connection()
        try:
            listener.wait(max(MIN_WAIT_SECONDS, wait))
        except Exception as exc:  # no LISTEN connection now: wait by the clock, reconnect next time
            log.warning("cannot listen for scheduled messages (%s); waiting %.1fs", exc, interval)
            stop.wait(interval)
    listener.close()
    log.info("scheduler stopped")
