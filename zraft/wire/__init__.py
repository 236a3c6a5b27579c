"""The wire: every message between zraft processes and nodes (messages.py) and its encoding
into ZeroMQ frames (codec.py)."""

from zraft.wire.codec import RemoteProtocolError, decode, encode
from zraft.wire.messages import PROTOCOL_VERSION, REGISTRY, WireMessage
from zraft.wire.schema import Frames

__all__ = ["Frames", "PROTOCOL_VERSION", "REGISTRY", "RemoteProtocolError", "WireMessage", "decode", "encode"]
