-- pgTAP conventions for tests/sql/*.sql (run by scripts/run_pgtap.sh through pg_prove):
--   * Files run in name order against one freshly migrated database, with pgTAP loaded
--     into its public schema; name them NN_<concern>_test.sql.
--   * Each file is one transaction that rolls back, so files cannot see each other's rows:
--         begin;
--         select plan(n);
--         ... one assertion per line ...
--         select * from finish();
--         rollback;
--   * plan(n) must match the number of assertions; a mismatch fails the file.

begin;
select plan(2);

select has_schema('noetl', 'schema noetl exists');
select has_table('noetl', 'schema_migrations', 'migrations are recorded in a table');

select * from finish();
rollback;
