"""ZeroMQ plumbing shared by zraft's processes: socket factories with the options each link
needs (sockets.py), the raft peer links (peers.py) and a small synchronous RPC client (rpc.py).

Rules of this package:
- plain synchronous pyzmq sockets only (zmq.asyncio is about 3x slower here);
- every socket is made by a factory in sockets.py, so the options a link relies on (LINGER=0,
  IMMEDIATE, HWMs, ROUTER_MANDATORY) are set in exactly one place and tested there;
- sends that could block never do: they use NOBLOCK and report a drop instead.
"""

from zraft.transport.peers import PeerLinks, coalesce
from zraft.transport.rpc import RpcClient, RpcTimeout
from zraft.transport.sockets import (
    api_dealer,
    api_server,
    api_subscriber,
    bind,
    peer_dealer,
    peer_inbox,
    publisher,
    recv_batch,
    rpc_dealer,
    rpc_server,
    send_nowait,
    subscriber,
)

__all__ = [
    "PeerLinks", "RpcClient", "coalesce", "RpcTimeout", "api_dealer", "api_server", "api_subscriber", "bind",
    "peer_dealer", "peer_inbox", "publisher", "recv_batch", "rpc_dealer", "rpc_server", "send_nowait", "subscriber",
]
