"""PKI for the network: CA, gateway and system certificates, signing and encryption keys."""
