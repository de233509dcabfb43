"""The WhatsApp Cloud sender: the shared sender loop over the Graph API client."""
