-- The NATS accelerator's SQL (wakeup.sql, capacity.sql): in a session with noetl.wakeup =
-- 'nats', notify_queue collects counts per kind for take_wake_counts_v1 instead of NOTIFY
-- (deferred counts are kept only when finish_and_claim's end says so); report_worker_v1
-- registers and refreshes a worker's capacity, ignoring redelivered and late reports and
-- reports sent before a clean stop; apply_worker_reports_v1 applies a batch.
begin;
select plan(14);

select is(noetl.take_wake_counts_v1(), '{}'::jsonb, 'nothing collected: no counts');
select set_config('noetl.wakeup', 'nats', true) as nats_mode;
select noetl.notify_queue('python', 3);
select noetl.notify_queue('python');
select noetl.notify_queue('http', 2);
select is(
    noetl.take_wake_counts_v1(), '{"python": 4, "http": 2}'::jsonb,
    'counts per kind add up'
);
select is(noetl.take_wake_counts_v1(), '{}'::jsonb, 'taking the counts clears them');
select noetl.notify_queue();
select is(noetl.take_wake_counts_v1(), '{"*": 1}'::jsonb, 'unknown kinds are counted as *');

select set_config('noetl.defer_notify', 'on', true) as deferred;
select noetl.notify_queue('noop', 5);
select is(noetl.take_wake_counts_v1(), '{}'::jsonb, 'a deferred wake-up is not handed out');
select set_config('noetl.defer_notify', 'off', true) as not_deferred;
select noetl.notify_queue();
select is(
    noetl.take_wake_counts_v1(), '{"noop": 5}'::jsonb,
    'the closing call hands out what was deferred, without *'
);

select is(
    noetl.report_worker_v1('{"worker_id": "cap1", "slots": 4, "available_slots": 3,
        "kinds": ["python"], "tool_pools": {"python": {"free": 3}},
        "sent_at": "2026-01-01T00:00:10+00:00"}'),
    true, 'a report registers an unknown worker'
);
select results_eq(
    $$select slots, available_slots, kinds, reported_via from noetl.worker_capacity
      where worker_id = 'cap1'$$,
    $$values (4, 3, array['python'], 'db')$$,
    'the registry view shows its capacity'
);
select is(
    noetl.report_worker_v1('{"worker_id": "cap1", "slots": 4, "available_slots": 1,
        "sent_at": "2026-01-01T00:00:10+00:00"}', 'nats'),
    false, 'the same report again (a redelivery) is ignored'
);
select is(
    noetl.report_worker_v1('{"worker_id": "cap1", "slots": 4, "available_slots": 0,
        "sent_at": "2026-01-01T00:00:05+00:00"}', 'nats'),
    false, 'an older report arriving late is ignored'
);
select is(
    noetl.apply_worker_reports_v1('[
        {"worker_id": "cap2", "slots": 2, "available_slots": 2},
        {"worker_id": "cap1", "slots": 4, "available_slots": 2,
         "sent_at": "2026-01-01T00:00:20+00:00"}]'),
    2, 'a batch applies each newer report'
);
select results_eq(
    $$select worker_id, available_slots, reported_via from noetl.worker
      where worker_id in ('cap1', 'cap2') order by worker_id$$,
    $$values ('cap1', 2, 'nats'), ('cap2', 2, 'nats')$$,
    'the batch left the newer capacity'
);
update noetl.worker set stopped_at = '2026-01-01T00:00:30+00:00'
where worker_id = 'cap1';
select is(
    noetl.report_worker_v1('{"worker_id": "cap1", "sent_at": "2026-01-01T00:00:25+00:00"}'),
    false, 'a report sent before a clean stop does not bring the worker back'
);
select throws_ok(
    $$select noetl.report_worker_v1('{"slots": 1}')$$, '22023', null,
    'a report without worker_id is refused'
);

select * from finish();  -- noqa: AM04
rollback;
