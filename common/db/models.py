"""peewee models over the tables that migrations create.

The schema is owned by the SQL migrations; these models map it for the ordinary reads and writes
(workspaces, keys, one message). Batch transitions use the raw statements in ``common.lifecycle``.
"""

from __future__ import annotations

from peewee import (
    AutoField,
    BigIntegerField,
    BlobField,
    BooleanField,
    CompositeKey,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)
from playhouse.postgres_ext import ArrayField, BinaryJSONField

from common.db.connection import db


class BaseModel(Model):
    class Meta:
        database = db


class Workspace(BaseModel):
    id = AutoField()
    name = TextField(unique=True)
    created_at = DateTimeField()
    resend_unknown = BooleanField()
    unique_tags = ArrayField(TextField)
    quiet_hours = TextField(null=True)
    timezone = TextField()
    quiet_hours_urgent = BooleanField()

    class Meta:
        table_name = "workspace"


class ApiKey(BaseModel):
    id = AutoField()
    workspace = ForeignKeyField(Workspace, column_name="workspace_id", backref="api_keys")
    prefix = TextField(unique=True)
    key_hash = TextField()
    scopes = ArrayField(TextField)
    created_at = DateTimeField()
    revoked_at = DateTimeField(null=True)

    class Meta:
        table_name = "api_key"


class ChannelConfig(BaseModel):
    id = AutoField()
    workspace = ForeignKeyField(Workspace, column_name="workspace_id")
    channel = TextField()
    provider = TextField()
    account_ref = TextField()
    credentials = BlobField()
    sender_identity = TextField()
    rate_limit_per_second = FloatField()
    created_at = DateTimeField()

    class Meta:
        table_name = "channel_config"


class Message(BaseModel):
    id = AutoField()
    workspace = ForeignKeyField(Workspace, column_name="workspace_id")
    direction = TextField()
    channel = TextField()
    to_addr = TextField()
    from_addr = TextField(null=True)
    body = TextField()
    status = TextField()
    priority = TextField()
    idempotency_key = TextField(null=True)
    tags = BinaryJSONField()
    natural_key = TextField(null=True)
    quiet_hours = TextField(null=True)
    enrolment_id = BigIntegerField(null=True)
    step = TextField(null=True)
    due_at = DateTimeField(null=True)
    status_changed_at = DateTimeField()
    attempts = IntegerField()
    throttles = IntegerField()
    redrives = IntegerField()
    provider = TextField(null=True)
    provider_message_id = TextField(null=True)
    provider_account = TextField(null=True)
    lookup_at = DateTimeField(null=True)
    last_error = TextField(null=True)
    error_code = TextField(null=True)
    segments = IntegerField(null=True)
    created_at = DateTimeField()
    updated_at = DateTimeField()
    sent_at = DateTimeField(null=True)
    delivered_at = DateTimeField(null=True)

    class Meta:
        table_name = "message"


class MessageEvent(BaseModel):
    id = AutoField()
    message = ForeignKeyField(Message, column_name="message_id", backref="events")
    status = TextField()
    at = DateTimeField()
    detail = BinaryJSONField()

    class Meta:
        table_name = "message_event"


class ProviderEvent(BaseModel):
    id = AutoField()
    provider = TextField()
    kind = TextField()
    provider_message_id = TextField(null=True)
    provider_account = TextField(null=True)
    message_id = BigIntegerField(null=True)
    status = TextField(null=True)
    payload = BinaryJSONField()
    signature_valid = BooleanField()
    applied_at = DateTimeField(null=True)
    received_at = DateTimeField()

    class Meta:
        table_name = "provider_event"


class Outbox(BaseModel):
    id = AutoField()
    workspace_id = BigIntegerField()
    event_type = TextField()
    message_id = BigIntegerField(null=True)
    payload = BinaryJSONField()
    lane = TextField()
    created_at = DateTimeField()
    dispatched_at = DateTimeField(null=True)

    class Meta:
        table_name = "outbox"


class WebhookEndpoint(BaseModel):
    id = AutoField()
    workspace = ForeignKeyField(Workspace, column_name="workspace_id")
    url = TextField()
    description = TextField()
    event_types = ArrayField(TextField)
    headers = BinaryJSONField()
    rate_limit_per_second = FloatField()
    enabled = BooleanField()
    disabled_reason = TextField(null=True)
    secret = BlobField()
    previous_secret = BlobField(null=True)
    previous_secret_until = DateTimeField(null=True)
    failing_since = DateTimeField(null=True)
    paused_until = DateTimeField(null=True)
    created_at = DateTimeField()
    updated_at = DateTimeField()

    class Meta:
        table_name = "webhook_endpoint"


class WebhookDelivery(BaseModel):
    id = AutoField()
    endpoint = ForeignKeyField(WebhookEndpoint, column_name="endpoint_id")
    workspace_id = BigIntegerField()
    event_key = TextField()
    event_type = TextField()
    body = TextField()
    rank = IntegerField()
    status = TextField()
    attempts = IntegerField()
    failures = IntegerField()
    due_at = DateTimeField()
    claimed_at = DateTimeField(null=True)
    last_status_code = IntegerField(null=True)
    last_error = TextField(null=True)
    created_at = DateTimeField()
    finished_at = DateTimeField(null=True)

    class Meta:
        table_name = "webhook_delivery"


class WebhookAttempt(BaseModel):
    id = AutoField()
    delivery = ForeignKeyField(WebhookDelivery, column_name="delivery_id")
    endpoint_id = BigIntegerField()
    attempt = IntegerField()
    at = DateTimeField()
    status_code = IntegerField(null=True)
    latency_ms = FloatField(null=True)
    response = TextField(null=True)
    error = TextField(null=True)
    next_attempt_at = DateTimeField(null=True)

    class Meta:
        table_name = "webhook_attempt"


class Schedule(BaseModel):
    id = AutoField()
    workspace = ForeignKeyField(Workspace, column_name="workspace_id")
    cron = TextField()
    timezone = TextField()
    message = BinaryJSONField()
    start_at = DateTimeField(null=True)
    end_at = DateTimeField(null=True)
    max_count = IntegerField(null=True)
    sent_count = IntegerField()
    paused = BooleanField()
    next_run_at = DateTimeField(null=True)
    created_at = DateTimeField()
    updated_at = DateTimeField()

    class Meta:
        table_name = "schedule"


class Sequence(BaseModel):
    id = AutoField()
    workspace = ForeignKeyField(Workspace, column_name="workspace_id")
    name = TextField()
    steps = BinaryJSONField()
    created_at = DateTimeField()

    class Meta:
        table_name = "sequence"


class Enrolment(BaseModel):
    id = AutoField()
    sequence = ForeignKeyField(Sequence, column_name="sequence_id")
    workspace_id = BigIntegerField()
    channel = TextField()
    to_addr = TextField()
    anchors = BinaryJSONField()
    variables = BinaryJSONField()
    timezone = TextField()
    status = TextField()
    created_at = DateTimeField()
    updated_at = DateTimeField()

    class Meta:
        table_name = "enrolment"


class Contact(BaseModel):
    id = AutoField()
    workspace = ForeignKeyField(Workspace, column_name="workspace_id")
    name = TextField(null=True)
    timezone = TextField(null=True)
    locale = TextField(null=True)
    quiet_hours = TextField(null=True)
    attributes = BinaryJSONField()
    created_at = DateTimeField()
    updated_at = DateTimeField()

    class Meta:
        table_name = "contact"


class ContactAddress(BaseModel):
    workspace_id = BigIntegerField()
    channel = TextField()
    address = TextField()
    contact = ForeignKeyField(Contact, column_name="contact_id", backref="addresses")

    class Meta:
        table_name = "contact_address"
        primary_key = CompositeKey("workspace_id", "channel", "address")
