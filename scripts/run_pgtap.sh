#!/usr/bin/env bash
# Run the pgTAP tests in tests/sql/*.sql against a fresh, migrated database.
#
# The server is the one pytest uses (noetl_pg.testdb: NOETL_TEST_DSN, else 127.0.0.1:5432,
# else the embedded server; NOETL_TEST_SERVER=embedded forces the embedded one). The
# database is created for this run and dropped on exit, whatever the outcome.
# Exits non-zero when a test fails, when pg_prove cannot run, or when there are no tests.
# Each test file runs in its own transaction and rolls back (see tests/sql/00_schema_test.sql).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}

shopt -s nullglob
test_files=(tests/sql/*.sql)
if [ "${#test_files[@]}" -eq 0 ]; then
    echo "run_pgtap: no pgTAP tests in tests/sql/*.sql; refusing to report success" >&2
    exit 1
fi

bash scripts/install_pgtap.sh

work=$(mktemp -d)
DSN=$("$PYTHON" -m noetl_pg.testdb create noetl_pgtap)
cleanup() {
    "$PYTHON" -m noetl_pg.testdb drop "$DSN" || echo "run_pgtap: could not drop $DSN" >&2
    rm -rf "$work"
}
trap cleanup EXIT
echo "run_pgtap: database $DSN" >&2

"$PYTHON" -m noetl_pg.migrate "$DSN"
psql --no-psqlrc --quiet --set ON_ERROR_STOP=1 --dbname "$DSN" \
    --file .cache/pgtap/pgtap.sql >/dev/null

# pg_prove splits its --dbname value on "=", so a key=value conninfo cannot go through it.
# Hand the connection to psql as a libpq service instead: any DSN form (key=value, or a
# postgresql:// URI with a socket host) becomes one [noetl_pgtap] section.
"$PYTHON" - "$DSN" >"$work/pg_service.conf" <<'PY'
import sys

from psycopg.conninfo import conninfo_to_dict

print("[noetl_pgtap]")
for key, value in conninfo_to_dict(sys.argv[1]).items():
    print(f"{key}={value}")
PY
PGSERVICEFILE="$work/pg_service.conf" PGSERVICE=noetl_pgtap \
    pg_prove --ext .sql --failures "${test_files[@]}"
