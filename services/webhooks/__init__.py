"""The webhooks stage: tell customers' systems what happened, signed, retried for days, and
never at an address inside the network (``common.netguard``)."""
