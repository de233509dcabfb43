"""The web chat widget sender: the shared sender loop over a Redis publish."""
