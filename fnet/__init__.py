"""fnet: functional networks and key neurons in language models."""

__version__ = "0.1.0"
