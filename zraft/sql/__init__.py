"""SQL text handling done before a statement enters the Raft log (see DESIGN.md).

- zraft.sql.rewrite: rewrite() and explain_rewrite(), deterministic statement rewriting;
- zraft.sql.lexer: the SQLite-exact tokenizer it stands on;
- zraft.sql.instant: one clock reading spelled as SQL literals;
- zraft.sql.syntax: SQLite's own verdict on whether a statement parses (for /db/sql).

Nothing is re-exported here, so `zraft.sql.rewrite` always names the module.
"""
