-- Queries of the reaper a worker runs (sql/functions/reaper.sql).

-- name: reap_earlier_process
-- At start-up: take back the claims an earlier process with this worker id left behind.
select noetl.reap_earlier_process_v1(%(worker_id)s, %(max_reclaims)s) as reaped;
