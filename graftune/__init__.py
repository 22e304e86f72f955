"""graftune: populations of CNNs that improve each other by filter grafting, on Ray."""

__version__ = "0.1.0"
