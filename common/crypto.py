"""Provider credentials encrypted at rest with Fernet, keyed from POSTROOM_SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet

from common.config import settings


def _fernet() -> Fernet:
    key = hashlib.sha256(settings.postroom_secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def seal(credentials: dict[str, Any]) -> bytes:
    return _fernet().encrypt(json.dumps(credentials).encode())


def unseal(token: bytes) -> dict[str, Any]:
    return json.loads(_fernet().decrypt(bytes(token)))
