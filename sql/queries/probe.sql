-- The health probe of a worker process (`noetl worker probe`, run by the systemd unit's
-- users and by Kubernetes' liveness and readiness probes, workers/).

-- name: worker_probe
-- One worker's registry row: whether it is running and how old its last heartbeat is.
select
    w.worker_id,
    w.slots,
    w.stopped_at is null as running,
    extract(epoch from noetl.now() - w.heartbeat_at)::float8 as heartbeat_age_seconds
from noetl.worker as w
where w.worker_id = %(worker_id)s;
