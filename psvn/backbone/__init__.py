"""psvn.backbone."""
