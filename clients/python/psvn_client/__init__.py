"""psvn_client: the Python SDK for a psvn gateway (filled in by the SDK work)."""
