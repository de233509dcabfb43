"""``postroom widget``: serve the widget app under gunicorn's gevent worker.

The process becomes gunicorn (exec), so whatever supervises it (``postroom run``, Kubernetes)
signals gunicorn's arbiter directly. ``--port`` overrides POSTROOM_WIDGET_PORT (a second local
replica); ``--bind`` overrides the whole address (a pod binds 0.0.0.0).
"""

from __future__ import annotations

import os
import sys

from common.config import ROOT


def argv(bind: str | None = None) -> list[str]:
    """The gunicorn command line that serves the widget."""
    extra = ["--bind", bind] if bind else []
    return [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "services/widget/gunicorn_conf.py"), "--no-control-socket",
            *extra, "services.widget.wsgi:app"]


def main(port: int | None = None, bind: str | None = None) -> None:
    env = dict(os.environ)
    if port is not None:
        env["POSTROOM_WIDGET_PORT"] = str(port)
    os.execve(sys.executable, argv(bind), env)
