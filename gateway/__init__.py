"""The per-organisation gateway: mTLS HTTP API for local systems, validate, decide, seal,
route over the backbone, open, deliver into mailboxes, receipts, metrics."""
