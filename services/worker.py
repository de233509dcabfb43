"""``postroom worker <stage>``: one process that runs a stage's actors, one Dramatiq worker per lane.

It replaces the ``dramatiq``/``dramatiq-gevent`` command for every worker service. Each lane
(``<stage>_urgent``, ``<stage>_bulk``) gets its own ``dramatiq.Worker`` with its own consumers,
work queue and threads (greenlets for a sender stage), so a bulk backlog can never occupy the
threads that serve the urgent lane, while both lanes share one process, one broker connection
pool and one database pool. ``--lanes`` narrows the lanes (Kubernetes runs a Deployment per
sender lane); local runs serve every lane of a stage from one process.

Idle cost does not grow with the thread count: worker threads block on their work queue until
work or shutdown arrives (Dramatiq's own threads wake every ``worker_timeout`` to look for a
stop flag), and the broker's consumers wait on a wake-up channel (``common.broker``).

The process serves Prometheus metrics for everything it records on ``dramatiq_prom_host``:
``dramatiq_prom_port`` (files under ``dramatiq_prom_db``), stops cleanly on SIGTERM/SIGINT within
the shutdown timeout, and exits non-zero when one of its workers dies, so whatever supervises it
(``postroom run``, Kubernetes) restarts it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from importlib import import_module
from queue import Empty, PriorityQueue
from typing import Any

STAGE_MODULES = {
    "processing": "services.processing.actors",
    "routing": "services.routing.actors",
    "sms": "services.senders.sms.actors",
    "http": "services.senders.http.actors",
    "email": "services.senders.email.actors",
    "whatsapp_cloud": "services.senders.whatsapp_cloud.actors",
    "whatsapp_qr": "services.senders.whatsapp_qr.actors",
    "webhooks": "services.webhooks.actors",
    "receipts": "services.ingest.actors",
    "ai": "services.processing.ai_actors",
    "widget": "services.senders.widget.actors",
}
# Latency-bound stages: greenlets, not threads (invariant 12).
SENDER_STAGES = {"sms", "http", "email", "whatsapp_cloud", "whatsapp_qr", "webhooks", "widget"}
# The AI stage waits on model calls (seconds each): greenlets too, a count per plan lane.
GEVENT_STAGES = SENDER_STAGES | {"ai"}
SHUTDOWN_TIMEOUT_MS = 10_000  # running actors get this long to finish; the rest is requeued
LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(threadName)s %(name)s %(message)s"

log = logging.getLogger("postroom.worker")


def lane_threads(stage: str, lane: str, cfg: Any) -> int:
    """Threads (greenlets) of one lane's worker.

    Processing and routing: POSTROOM_WORKER_THREADS per lane. A sender: POSTROOM_SENDER_GREENLETS
    for the bulk lane, POSTROOM_SENDER_URGENT_GREENLETS for the urgent one: urgent traffic is
    small, and its batches never wait for bulk's greenlets since each lane has its own. The AI
    stage: POSTROOM_AI_GREENLETS_PREMIUM, _PRO or _BASIC, by its plan lane.
    """
    if stage == "ai":
        return int(getattr(cfg, f"postroom_ai_greenlets_{lane}"))
    if stage in SENDER_STAGES:
        return cfg.postroom_sender_urgent_greenlets if lane == "urgent" else cfg.postroom_sender_greenlets
    return cfg.postroom_worker_threads


def worker_class() -> type:
    """``LaneWorker``, defined once Dramatiq is imported (after gevent's monkey-patching)."""
    import dramatiq
    from dramatiq.common import q_name
    from dramatiq.worker import ConsumerThread

    from common.broker import WakingRedisBroker

    class ClosableWorkQueue(PriorityQueue):  # type: ignore[type-arg]
        """A work queue whose blocking ``get`` waits for an item or ``close()``, ignoring timeouts.

        Dramatiq's worker threads wait here with ``timeout=worker_timeout`` only to notice their
        stop flag; ``close()`` wakes them for that instead, so an idle thread never wakes.
        """

        def __init__(self) -> None:
            super().__init__()
            self.closed = False

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            if not block:
                return super().get(block=False)
            with self.not_empty:
                while not self._qsize():
                    if self.closed:
                        raise Empty
                    self.not_empty.wait()
                item = self._get()
                self.not_full.notify()
                return item

        def close(self) -> None:
            with self.not_empty:
                self.closed = True
                self.not_empty.notify_all()

    class PromptConsumerThread(ConsumerThread):
        """A consumer thread that wakes its consumer when told to stop (it may be waiting idle)."""

        broker: WakingRedisBroker

        def stop(self) -> None:
            super().stop()
            self.broker.wake(self.queue_name)

    class LaneWorker(dramatiq.Worker):
        """A Dramatiq worker whose idle threads and consumers do not poll."""

        def __init__(self, broker: dramatiq.Broker, **options: Any) -> None:
            super().__init__(broker, **options)
            self.work_queue = self.closable_queue = ClosableWorkQueue()

        def _add_consumer(self, queue_name: str, *, delay: bool = False) -> None:
            if queue_name in self.consumers:
                return
            if self.consumer_whitelist and q_name(queue_name) not in self.consumer_whitelist:
                return
            consumer = self.consumers[queue_name] = PromptConsumerThread(
                broker=self.broker, queue_name=queue_name, prefetch=self.delay_prefetch if delay else self.queue_prefetch,
                work_queue=self.work_queue, worker_timeout=self.worker_timeout)
            consumer.start()

        def stop(self, timeout: int = SHUTDOWN_TIMEOUT_MS) -> None:
            for thread in self.workers:
                thread.stop()  # the flag Dramatiq's stop sets too, set before the wake-up below
            self.closable_queue.close()
            super().stop(timeout)

        def dead_threads(self) -> list[str]:
            threads = [*self.workers, *self.consumers.values()]
            return [t.name for t in threads if not t.is_alive()]

    return LaneWorker


def run(stage: str, lanes: str | None = None, threads: int | None = None) -> int:
    """Run the stage's lane workers until SIGTERM/SIGINT (0) or until one of them dies (1).

    ``stage``: a key of ``STAGE_MODULES`` (a sender stage and the AI stage run greenlets);
    ``lanes``: comma-separated, of ``common.broker.lanes_of(stage)`` (default: every lane); ``threads``: per lane, instead of the settings
    (``lane_threads``).
    """
    use_gevent = stage in GEVENT_STAGES
    if use_gevent:
        from gevent import monkey

        monkey.patch_all()  # before Dramatiq, redis and psycopg2 create sockets, locks, threads

    from common.config import settings

    # Again after patching, so the handlers' locks are gevent's.
    logging.basicConfig(level=settings.postroom_log_level, format=LOG_FORMAT, force=True)
    from common.broker import IDLE_WAIT_MS, lanes_of, queue_name
    from common.broker import broker as stage_broker

    known = lanes_of(stage)
    chosen = tuple(lane.strip() for lane in lanes.split(",") if lane.strip()) if lanes else known
    if not chosen or set(chosen) - set(known):
        log.critical("unknown lanes %r: the lanes of %s are %s", lanes, stage, ", ".join(known))
        return 2
    counts = {lane: threads or lane_threads(stage, lane, settings) for lane in chosen}
    module = import_module(STAGE_MODULES[stage])
    stage_broker.emit_after("process_boot")
    if os.environ.get("dramatiq_prom_port"):
        # Imported after common.broker, which chooses Prometheus's multiprocess mode.
        from common import metrics

        try:  # bound here, in the main thread, so a port already taken fails the start, loudly
            metrics.serve(int(os.environ["dramatiq_prom_port"]), os.environ.get("dramatiq_prom_host", "0.0.0.0"))
        except OSError as exc:
            log.critical("cannot serve metrics: %s", exc)
            return 1
    stage_broker.idle_wait_ms = IDLE_WAIT_MS  # type: ignore[attr-defined]

    # Each lane's worker adds Dramatiq's consumer bookkeeping middleware once: expected here.
    logging.getLogger(f"dramatiq.broker.{type(stage_broker).__name__}").addFilter(
        lambda record: "_WorkerMiddleware" not in record.getMessage())
    lane_worker = worker_class()
    workers = {lane: lane_worker(stage_broker, queues={queue_name(stage, lane)}, worker_threads=counts[lane],
                                 worker_timeout=settings.postroom_broker_poll_ms)
               for lane in chosen}
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    for worker in workers.values():
        worker.start()
    # A stage's own long-running loops (the webhooks fan-out listener) run beside its workers.
    for task in getattr(module, "BACKGROUND", ()):
        threading.Thread(target=task, args=(stopping,), name=task.__name__, daemon=True).start()
    unit = "greenlets" if use_gevent else "threads"
    log.info("worker %s serving %s", stage, ", ".join(f"{queue_name(stage, lane)} ({counts[lane]} {unit})" for lane in chosen))

    status = 0
    while not stopping.wait(1.0):
        dead = {lane: worker.dead_threads() for lane, worker in workers.items()}
        dead = {lane: names for lane, names in dead.items() if names}
        if dead:
            log.critical("worker threads died: %s; stopping so the process is restarted", dead)
            status = 1
            break
    log.info("stopping within %d ms", SHUTDOWN_TIMEOUT_MS)
    stoppers = [threading.Thread(target=worker.stop, args=(SHUTDOWN_TIMEOUT_MS,), name=f"stop-{lane}")
                for lane, worker in workers.items()]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()
    stage_broker.close()
    log.info("stopped")
    return status
