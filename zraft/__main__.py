"""`python -m zraft` is the `zraft` command."""
from zraft.cli import main

main()
