-- 0027_event_type_index: noetl.event loses its (execution_id, event_type) index. Idempotent.

-- No statement of the engine looks events up by type: the projector reads them by
-- (tx_id, event_id), everything else by execution in event order (the primary key), and
-- the server's filter by type walks the primary key too (its "type is null or" test
-- cannot use a type index in a generic plan). The index was written for every event: two
-- index entries per loop iteration, two or three per chain step, for no reader. The
-- uniqueness of a loop's closing events keeps its own partial index
-- (event_loop_close_once_idx).
drop index if exists noetl.event_type_idx;
