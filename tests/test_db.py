"""Statement preparation: planned once per connection, executed with the right values after."""

from __future__ import annotations

import pytest

from common.db.connection import db, fetch, transaction

SQL = "SELECT %(a)s::int + %(b)s::int, %(a)s::int, %(names)s::text[]"


def test_prepared_statement_reuses_one_plan_with_named_values_in_order(clean_db):
    with transaction():
        first = fetch(SQL, {"a": 1, "b": 2, "names": ["x"]}, prepared=True)
        second = fetch(SQL, {"b": 10, "a": 5, "names": []}, prepared=True)
        prepared = fetch("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ("%$1::int + $2::int%",))
    assert first == [(3, 1, ["x"])] and second == [(15, 5, [])]
    assert prepared == [(1,)]


def test_prepared_statement_survives_a_rolled_back_transaction(clean_db):
    with pytest.raises(RuntimeError), transaction():
        fetch(SQL, {"a": 1, "b": 1, "names": []}, prepared=True)
        raise RuntimeError("roll back")
    with transaction():
        assert fetch(SQL, {"a": 2, "b": 2, "names": []}, prepared=True) == [(4, 2, [])]
    db.close()
