"""twistkv: a distributed, Redis-compatible key-value store built on Twisted."""

__all__ = ["__version__"]

__version__ = "0.1.0"
