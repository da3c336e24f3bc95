"""deepcomp: Deep Compression for learned image compression models."""

__version__ = "0.1.0"
