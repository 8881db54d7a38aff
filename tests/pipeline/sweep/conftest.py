"""The PostgreSQL server the sweep tests share (Debian's cluster, a role with a password)."""

import os
import secrets
import shutil
import subprocess

import pytest

from tests.helpers.postgres import psql
from tests.helpers.services import require_service


@pytest.fixture(scope="session")
def postgres():
    """Debian's PostgreSQL cluster, started if down (and stopped at the end only then), with a
    password-protected role and a database of its own."""
    if os.geteuid() != 0 or not shutil.which("pg_ctlcluster"):
        require_service("needs root and Debian's postgresql (`make test` installs it, as root)")
    line = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    version, name, port, status = line.split()[:4]
    started = status != "online"
    if started:
        subprocess.run(["pg_ctlcluster", version, name, "start"], check=True)
    user, password, db = "ddfp_sweep", f"pw-{secrets.token_hex(8)}", "ddfp_sweep_test"
    psql(f"DROP DATABASE IF EXISTS {db}")
    psql(f"DROP ROLE IF EXISTS {user}")
    psql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
    psql(f"CREATE DATABASE {db} OWNER {user}")
    yield {"user": user, "password": password, "port": port, "db": db}
    psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    psql(f"DROP ROLE IF EXISTS {user}")
    if started:
        subprocess.run(["pg_ctlcluster", version, name, "stop"], check=False)
