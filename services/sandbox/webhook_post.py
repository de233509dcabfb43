"""How the sandbox's provider imitations POST their signed webhooks to ingest.

One pooled urllib3 client per imitation; a POST is tried again twice after a connection error or
a 5xx (as providers do, briefly), never after a 4xx (refused on its merits), and every outcome is
counted in the sandbox's record (``callbacks_sent``, ``callback_retries``, ``callbacks_failed``).
A receiver that is down costs a log line, never an exception: the imitation carries on.
"""

from __future__ import annotations

import logging

import gevent
import urllib3

from services.sandbox.records import ReceivedMessages

logger = logging.getLogger(__name__)

RETRY_DELAYS_SECONDS = (0.2, 0.5)
TIMEOUT_SECONDS = 5.0


class WebhookPoster:
    """POSTs raw signed bodies to ``url``; ``what`` names the webhooks in a log line."""

    def __init__(self, records: ReceivedMessages, url: str, what: str) -> None:
        self._records = records
        self.url = url
        self._what = what
        self._http = urllib3.PoolManager(num_pools=4, maxsize=64, retries=False,
                                         timeout=urllib3.Timeout(total=TIMEOUT_SECONDS))

    def post(self, raw: bytes, headers: dict[str, str]) -> int | None:
        """The receiver's HTTP status for one webhook (None: it never answered in time)."""
        failure = ""
        for attempt in range(len(RETRY_DELAYS_SECONDS) + 1):
            if attempt:
                self._records.count("callback_retries")
                gevent.sleep(RETRY_DELAYS_SECONDS[attempt - 1])
            try:
                response = self._http.request("POST", self.url, body=raw, headers=headers, redirect=False)
            except urllib3.exceptions.HTTPError as exc:
                failure = repr(exc)
                continue
            if 200 <= response.status < 300:
                self._records.count("callbacks_sent")
                return response.status
            if 400 <= response.status < 500:  # refused on its merits: providers do not retry those either
                self._records.count("callbacks_failed")
                return response.status
            failure = f"HTTP {response.status}"
        self._records.count("callbacks_failed")
        logger.warning("gave up on a %s webhook to %s: %s", self._what, self.url, failure)
        return None
