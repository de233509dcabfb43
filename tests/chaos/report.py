"""The chaos table: one line per scenario, then the notes that explain any number that is not 0."""

from __future__ import annotations

from tests.chaos.outcome import Row

COLUMNS = ("scenario", "messages", "delivered once", "duplicates", "lost", "unknown outcomes",
           "failed", "recovery s", "API during fault", "webhooks lost", "webhook repeats")


def _api(row: Row) -> str:
    if not row.api_calls_during_fault:
        return "-"
    statuses = " ".join(f"{status}×{n}" for status, n in row.api_statuses.items())
    return f"{statuses}, slowest {row.api_slowest_seconds:.1f} s"


def _cells(row: Row) -> list[str]:
    messages = str(row.messages) if row.messages == row.posted else f"{row.messages}/{row.posted}"
    recovery = "not recovered" if row.recovery_seconds is None else f"{row.recovery_seconds:.1f}"
    return [row.scenario, messages, str(row.delivered_once), str(row.duplicates), str(row.lost),
            str(row.unknown), str(row.failed), recovery, _api(row), str(row.webhooks_lost), str(row.webhook_repeats)]


def table(rows: list[Row]) -> str:
    lines = [list(COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    notes = [f"  {r.scenario}: {note}" for r in rows for note in r.notes]
    if notes:
        text += ["", "notes:", *notes]
    return "\n".join(text)
