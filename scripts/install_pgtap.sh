#!/usr/bin/env bash
# Make pgTAP usable without installing it into any PostgreSQL server:
#   - `pg_prove` (Debian package libtap-parser-sourcehandler-pgtap-perl), installed with apt;
#   - `.cache/pgtap/pgtap.sql`, pgTAP's SQL taken out of the postgresql-15-pgtap .deb with
#     `apt-get download` + `dpkg-deb -x` (never installed, so no server package is pulled in).
# pgTAP is pure SQL/PL/pgSQL, so the same file loads with `psql -f` into PostgreSQL 15..18,
# including the embedded server, which has no extension directory we could install into.
# Idempotent: when both are present it does nothing and returns at once.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PGTAP_DIR=.cache/pgtap
PGTAP_SQL=$PGTAP_DIR/pgtap.sql
PGTAP_DEB=${PGTAP_DEB:-postgresql-15-pgtap}

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        "${SUDO[@]}" apt-get update -qq
        apt_updated=1
    fi
}

if ! command -v pg_prove >/dev/null 2>&1; then
    echo "install_pgtap: installing pg_prove (libtap-parser-sourcehandler-pgtap-perl)" >&2
    apt_update_once
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        libtap-parser-sourcehandler-pgtap-perl >/dev/null
fi

if [ ! -s "$PGTAP_SQL" ]; then
    echo "install_pgtap: extracting pgtap.sql from $PGTAP_DEB" >&2
    mkdir -p "$PGTAP_DIR"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # apt's sandbox user must be able to write the download directory.
    chmod 0777 "$work"
    if ! (cd "$work" && apt-get download -qq "$PGTAP_DEB" 2>/dev/null); then
        apt_update_once
        (cd "$work" && apt-get download -qq "$PGTAP_DEB")
    fi
    dpkg-deb -x "$work"/*.deb "$work/root"
    # The full install script is pgtap--<version>.sql (upgrade scripts have two versions);
    # older packages ship it only as pgtap.sql.
    source_sql=$(find "$work/root" -name 'pgtap--[0-9]*.sql' ! -name 'pgtap--*--*.sql' \
        | sort -V | tail -n 1)
    if [ -z "$source_sql" ]; then
        source_sql=$(find "$work/root" -name 'pgtap.sql' | head -n 1)
    fi
    if [ -z "$source_sql" ]; then
        echo "install_pgtap: no pgtap SQL script found in $PGTAP_DEB" >&2
        exit 1
    fi
    # Extension scripts may start with an `\echo Use "CREATE EXTENSION ..." \quit` guard
    # that would stop `psql -f`; drop it. Write to a temp name, then rename, so an
    # interrupted run never leaves a half-written file that later runs would trust.
    grep -v '^\\echo Use .*\\quit' "$source_sql" >"$PGTAP_SQL.tmp"
    mv "$PGTAP_SQL.tmp" "$PGTAP_SQL"
    echo "install_pgtap: wrote $PGTAP_SQL from $(basename "$source_sql")" >&2
fi
