-- 0015b_server_brin: summarize the BRIN indexes of 0015 as rows arrive, not only at
-- vacuum, so that /metrics' trailing-window reads skip all but the newest block ranges
-- (an unsummarized range is always read). Idempotent. (EXECUTE only because the linter
-- does not parse ALTER INDEX ... SET.)
do $$
begin
    execute 'alter index noetl.command_claimed_at_brin set (autosummarize = on)';
    execute 'alter index noetl.command_finished_at_brin set (autosummarize = on)';
end
$$;
