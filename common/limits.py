"""How long a message body may be on each channel: the one table behind the API's input checks
(``services.ingest``), an agent's conversation reply, and the cut of the bot's replies
(``services.processing.prompt``), so nothing the bot writes exceeds what the API would accept.

Twilio refuses an SMS over 1,600 characters (the ``http`` channel keeps the same bound); WhatsApp
text holds 4,096 (the widget keeps that too); an email body 100,000.
"""

from __future__ import annotations

from typing import Final

MAX_BODY: Final[dict[str, int]] = {"sms": 1600, "http": 1600, "email": 100_000, "whatsapp_cloud": 4096,
                                   "whatsapp_qr": 4096, "widget": 4096}
