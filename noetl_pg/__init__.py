"""noetl-pg: a NoETL playbook engine whose correctness lives in PostgreSQL."""

__version__ = "0.1.0"
