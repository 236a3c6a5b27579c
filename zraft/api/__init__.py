"""The client API process's logic: rqlite's HTTP API (http.py) and the native ZeroMQ endpoint
(native.py) over one request service (service.py), which reaches the raft and store processes
and the other nodes through zraft.api.zmq_client. The process itself is zraft.procs.api_proc."""
