"""Storage behind one interface: DynamoDB in production, in memory for the pure tests."""

from chalicelib.storage.base import Storage

__all__ = ["Storage"]
