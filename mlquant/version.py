"""The version of mlquant (a leaf module: every module that records the version imports it from here)."""

__version__ = "0.1.0"
