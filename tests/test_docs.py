"""The README stays true to the code: its configuration table is the one config.py generates."""

from __future__ import annotations

from common.config import ROOT, SETTINGS, markdown_table


def test_readme_configuration_table_matches_settings():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- config-table -->") + len("<!-- config-table -->")
    end = readme.index("<!-- /config-table -->")
    assert readme[start:end].strip() == markdown_table()
    assert all(f"`{s.env}`" in readme for s in SETTINGS)


def test_readme_names_every_queue_the_workers_consume(broker):
    readme = (ROOT / "README.md").read_text()
    for queue in broker.get_declared_queues():
        if not queue.endswith(".DQ"):
            assert f"`{queue}`" in readme, queue
