"""`python -m noetl_pg.cli ...` is `noetl ...`."""

from noetl_pg.cli import main

main()
