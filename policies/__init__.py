"""The network's one compliance policy set: catalogue, rules, the engine that decides,
payload validation, and the signed bundle that every gateway enforces."""
