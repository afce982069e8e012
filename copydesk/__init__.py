"""Copydesk: a self-hosted server for no-code writing agents."""

__version__ = "0.1.0"
