"""psvn: the Public Services virtual Network.

This small package holds only what every component shares: addresses, the envelope, the
message lifecycle, the one error type, configuration loading, logging and the ``psvn`` CLI.
"""

__version__ = "0.1.0"
