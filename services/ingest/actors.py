"""Ingest's inbound work, run by ``postroom worker receipts``: queues ``receipts_urgent``,
``receipts_normal`` and ``receipts_bulk`` carry ids of status receipts ingest kept.

A provider's status callback costs ingest one INSERT and an answer; here the receipts are applied
many at a time, one statement per status (``common.receipts.apply_events``). A receipt whose
message is not known yet stays pending for the sender or the reconciler to apply, and the
reconciler applies any whose broker message was lost.
"""

from __future__ import annotations

from common.broker import lane_actors
from common.db.connection import transaction
from common.receipts import apply_events


def apply_receipts(ids: list[int]) -> None:
    with transaction():
        apply_events(ids)


ACTORS = lane_actors("receipts", apply_receipts)
