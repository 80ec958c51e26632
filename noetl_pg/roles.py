"""`noetl db roles`: create the least-privilege roles and apply ownership and grants.

The same SQL runs at the end of every migrate (sql/functions/zz_privileges.sql); this
command is for a DBA when the migrating user could not create roles, or after a role was
dropped. Roles are cluster-wide (created when missing); grants are per database.
"""

from __future__ import annotations

from noetl_pg import db
from noetl_pg.sqlfiles import sql_root

ROLES = ("noetl_admin", "noetl_worker", "noetl_operator", "noetl_reader")
PRIVILEGES_FILE = "zz_privileges.sql"


def apply_roles(dsn: str) -> list[str]:
    """Apply zz_privileges.sql to the database at `dsn`; the noetl roles that now exist."""
    with db.connection(dsn) as conn:
        conn.execute((sql_root() / "functions" / PRIVILEGES_FILE).read_text())
        rows = db.fetch_all(conn, "roles_present", roles=list(ROLES))
    return [row["rolname"] for row in rows]
