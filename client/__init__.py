"""A small asyncio client of the oncechat protocol v1 (docs/protocol.md)."""

from client.protocol import Client, ErrorFrame, connect

__all__ = ["Client", "ErrorFrame", "connect"]
