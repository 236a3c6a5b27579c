"""The OS processes of a node. Each `*_proc` module has `run(config) -> int` (the exit code),
called by the CLI: raft_proc (the Raft core, the log store and the peer transport), store_proc
(SQLite, apply) and api_proc (HTTP and native client APIs). The other modules are the named
parts the two synchronous shells are wired from; DESIGN.md shows one turn of each loop."""
