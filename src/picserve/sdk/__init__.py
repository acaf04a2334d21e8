"""The Python SDK: a PICPIK client that signs exactly as the server verifies."""

from picserve.sdk.client import Client

__all__ = ["Client"]
