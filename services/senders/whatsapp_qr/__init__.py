"""The WhatsApp QR sender: messages through a WAHA-compatible gateway's sessions, each paced."""
