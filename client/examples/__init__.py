"""Runnable examples of the client SDK (docs/client.md)."""
