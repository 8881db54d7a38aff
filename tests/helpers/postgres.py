"""PostgreSQL for the sweep tests: psql as the postgres user, and the SQLAlchemy URL of a role."""

import subprocess


def psql(sql: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-v", "ON_ERROR_STOP=1", "-qc", sql],
                   check=True, capture_output=True, text=True)


def pg_url(pg, password):
    return f"postgresql+psycopg2://{pg['user']}:{password}@127.0.0.1:{pg['port']}/{pg['db']}"
