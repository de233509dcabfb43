"""The peewee models and the SQL migrations describe the same tables."""

from __future__ import annotations

from common.db.connection import fetch, transaction


def test_every_model_maps_columns_the_migrations_create(clean_db):
    from common.db import models

    with transaction():
        columns = {(t, c) for t, c in fetch("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'")}
    mapped = [m for m in vars(models).values() if isinstance(m, type) and issubclass(m, models.BaseModel) and m is not models.BaseModel]
    assert {m._meta.table_name for m in mapped} == {"workspace", "api_key", "channel_config", "message", "message_event", "provider_event", "outbox",
                                                          "webhook_endpoint", "webhook_delivery", "webhook_attempt", "schedule",
                                                          "sequence", "enrolment", "contact", "contact_address"}
    for model in mapped:
        for field in model._meta.sorted_fields:
            assert (model._meta.table_name, field.column_name) in columns, f"{model.__name__}.{field.name}"
