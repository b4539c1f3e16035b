"""The network operator: backbone provisioning, registry, policy distribution, console."""
