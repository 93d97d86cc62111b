"""hcafs: the Human Cell Atlas Data Storage System as a filesystem."""

__version__ = "0.1.0"
