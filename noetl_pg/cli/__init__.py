"""The `noetl` command line: `app` holds the group and its verbs, one module per group of
verbs beside it; `common` the output, exit codes and DSN resolution they share."""

from noetl_pg.cli.app import main

__all__ = ["main"]
