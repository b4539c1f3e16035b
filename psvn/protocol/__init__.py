"""psvn.protocol."""
