"""gunicorn settings for the widget: gevent workers (each holds thousands of event streams), bind
address and worker count from config, multiprocess metrics, and no access log (an event stream's
URL carries its stream ticket, short-lived, but a credential still: services.widget.tickets)."""

from __future__ import annotations

from common.config import settings

bind = f"{settings.postroom_widget_host}:{settings.postroom_widget_port}"
workers = settings.postroom_widget_workers
worker_class = "gevent"
worker_connections = 10_000
keepalive = 30
graceful_timeout = 5  # open streams are cut at shutdown; browsers reconnect to another replica
timeout = 30
accesslog = None


def child_exit(server, worker) -> None:  # noqa: ANN001 - gunicorn's hook signature
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
