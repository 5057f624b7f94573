"""eclm: Ray-distributed edge-cloud continual learning."""

__version__ = "0.1.0"
