#!/bin/sh
# The command a deployed noetl worker runs: the systemd unit (workers/systemd/) and the
# Kubernetes Deployment (workers/k8s/) both start this file, so both start a worker the
# same way, and tests/py/test_workers_deploy.py runs it as they name it.
#
# Environment: NOETL_DSN (required): the engine database. NOETL_WORKER_ID: a stable id
# (default: the host name, which is the pod name in Kubernetes); a worker restarted under
# the same id takes back at once the claims its previous process left. Every other
# NOETL_* setting (docs/configuration.md) passes through. Arguments go to
# `noetl worker start` (--concurrency, --kinds, --no-projector ...).
set -eu

if [ -z "${NOETL_DSN:-}" ]; then
    echo "noetl worker: NOETL_DSN must name the engine database" >&2
    exit 2
fi
NOETL_WORKER_ID="${NOETL_WORKER_ID:-$(hostname)}"
export NOETL_WORKER_ID

# exec: the worker is the service's main process and gets its SIGTERM, on which it
# finishes the commands it holds, claims nothing more and releases the rest.
exec "${NOETL_BIN:-noetl}" worker start "$@"
