"""The HTTP server (`noetl server`): NoETL's API, Prometheus metrics and a web console.

Every endpoint runs named statements of `sql/queries/server.sql` over the same SQL functions
as the CLI (noetl.start_execution, noetl.cancel_execution, noetl.register_playbook, ...);
reads come from the projection (`noetl.execution_state`), never from scans of `noetl.event`.
"""
