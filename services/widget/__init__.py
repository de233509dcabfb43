"""The web chat widget service: an embeddable page, visitors, their messages and event streams (gevent)."""
