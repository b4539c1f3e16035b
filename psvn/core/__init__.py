"""psvn.core."""
