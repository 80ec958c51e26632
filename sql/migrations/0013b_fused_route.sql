-- 0013b_fused_route: complete_command and route_after take the arcs the completing worker
-- chose (`targets`), so a conditional transition is applied in the completion's
-- transaction without a route command. Their new signatures add a trailing defaulted
-- parameter; the old ones are dropped here so a call with the old argument list is not
-- ambiguous (sql/functions/ recreates both right after the migrations).
drop function if exists noetl.complete_command(bigint, integer, jsonb, jsonb, text);
drop function if exists noetl.route_after(noetl.command, text, text, text);
