"""Build hook: ship the checkout's `sql/` inside the wheel as `noetl_pg/_sql/`.

`sql/` stays at the top of the repository (where the SQL is edited and linted); the wheel
needs it inside the package so an install outside the checkout finds its migrations,
functions and queries (see noetl_pg/sqlfiles.py). Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SQL_FOLDERS = ("migrations", "functions", "queries")


class BuildPyWithSql(build_py):
    """build_py that also copies sql/<folder>/*.sql to <build>/noetl_pg/_sql/<folder>/."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's sql/ directly
        source_root = Path(__file__).resolve().parent / "sql"
        for folder in SQL_FOLDERS:
            files = sorted((source_root / folder).glob("*.sql"))
            if folder == "migrations" and not files:
                raise SystemExit("setup.py: no sql/migrations/*.sql to package")
            target = Path(self.build_lib) / "noetl_pg" / "_sql" / folder
            self.mkpath(str(target))
            for file in files:
                self.copy_file(str(file), str(target / file.name))


setup(cmdclass={"build_py": BuildPyWithSql})
