"""PKI for the network, one concern per module (each imports only those listed before it).

* :mod:`~psvn.certs.files`: atomic writes (private keys 0600 from the start), named-error reads,
  and the file names in a gateway's directory.
* :mod:`~psvn.certs.keys`: message keys (Ed25519 signing, X25519 and hybrid HPKE) and rotation,
  kept apart from certificates so either can change without the other.
* :mod:`~psvn.certs.ca`: the X.509 CA, the certificates it issues, fingerprints and CRL signing.
* :mod:`~psvn.certs.revocation`: reading, checking and amending the CA's CRL.
* :mod:`~psvn.certs.tls`: hardened TLS contexts (no dependency on the others: it takes paths).
"""
