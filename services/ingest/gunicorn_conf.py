"""gunicorn settings for ingest: bind address and workers from config, multiprocess metrics."""

from __future__ import annotations

from common.config import settings

bind = f"{settings.postroom_api_host}:{settings.postroom_api_port}"
workers = settings.postroom_api_workers
threads = 4
worker_class = "gthread"
keepalive = 30
graceful_timeout = 10
accesslog = None


def child_exit(server, worker) -> None:  # noqa: ANN001 - gunicorn's hook signature
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
