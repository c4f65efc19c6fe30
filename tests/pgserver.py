"""The PostgreSQL server of the PostgreSQL index's tests, and psql to look inside it.

scripts/test.sh starts one (scripts/pg-test-server.sh) and exports PACSGRID_PG_TEST_URL;
run by hand without it, `server()` starts a throwaway one with the same script. With
PACSGRID_PG_TEST_REQUIRED=1 (CI) a server that cannot be had fails the tests; otherwise
they are skipped only on a machine without PostgreSQL's binaries at all."""
from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import REPO

SCRIPT = REPO / "scripts" / "pg-test-server.sh"


def bindir() -> Path | None:
    """The newest PostgreSQL binaries' directory, as the script finds it; None if there are none."""
    r = subprocess.run([str(SCRIPT), "bindir"], capture_output=True, text=True, timeout=30)
    return Path(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else None


def required() -> bool:
    return os.environ.get("PACSGRID_PG_TEST_REQUIRED", "") not in ("", "0")


def psql_path() -> str:
    """psql of the server's version when there is one; else Debian's /usr/bin/psql."""
    b = bindir()
    if b is not None and (b / "psql").exists():
        return str(b / "psql")
    return "/usr/bin/psql"


@dataclass
class PgServer:
    """A database to point nodes at; each node gets a schema of its own from `schema()`."""
    url: str
    psql: str
    schemas: list[str] = field(default_factory=list)

    def query(self, sql: str, timeout: float = 60) -> list[list[str]]:
        """Rows of one SQL statement (fields split on tabs), by psql; failures raise."""
        r = subprocess.run([self.psql, "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                            "-d", self.url, "-c", sql],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"psql failed ({r.returncode}) on {sql!r}: {r.stderr}")
        return [line.split("\t") for line in r.stdout.splitlines() if line != ""]

    def schema(self, prefix: str = "t") -> str:
        """A fresh schema name (the node creates the schema), dropped at teardown."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.schemas.append(name)
        return name

    def schema_exists(self, name: str) -> bool:
        return self.query("SELECT count(*) FROM information_schema.schemata "
                          f"WHERE schema_name = '{name}'") == [["1"]]

    def drop_schemas(self) -> None:
        for s in self.schemas:
            with contextlib.suppress(Exception):
                self.query(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
        self.schemas.clear()


def start_script() -> dict[str, str]:
    """Starts a throwaway server with scripts/pg-test-server.sh; returns what it exports."""
    r = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        pytest.fail(f"scripts/pg-test-server.sh start failed ({r.returncode}):\n{r.stderr}")
    env = {}
    for line in r.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            k, v = words[1].split("=", 1)
            env[k] = v
    return env


@contextlib.contextmanager
def server():
    """The test server: PACSGRID_PG_TEST_URL's, else a throwaway one started here."""
    url = os.environ.get("PACSGRID_PG_TEST_URL")
    if url:
        pg = PgServer(url, psql_path())
        try:
            pg.query("SELECT 1")
        except AssertionError as e:
            pytest.fail(f"PACSGRID_PG_TEST_URL={url} is set but not usable: {e}")
        try:
            yield pg
        finally:
            pg.drop_schemas()
        return
    if bindir() is None:
        msg = ("no PostgreSQL binaries (apt: postgresql; scripts/install-test-deps.sh "
               "installs them) and PACSGRID_PG_TEST_URL unset")
        if required():
            pytest.fail(msg + ", but PACSGRID_PG_TEST_REQUIRED is set")
        pytest.skip(msg)
    env = start_script()
    try:
        pg = PgServer(env["PACSGRID_PG_TEST_URL"], psql_path())
        yield pg
    finally:
        if "PACSGRID_PG_TEST_DIR" in env:
            subprocess.run([str(SCRIPT), "stop", env["PACSGRID_PG_TEST_DIR"]],
                           capture_output=True, timeout=120)


@dataclass
class PrivateServer(PgServer):
    """A server of one test's own, which the test may crash and start again."""
    dir: Path = Path()
    port: int = 0

    def _pg_ctl(self, *args: str) -> None:
        bin_ = bindir()
        assert bin_ is not None
        cmd = [str(bin_ / "pg_ctl"), "-D", str(self.dir / "data"), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"pg_ctl {' '.join(args)} failed: {r.stdout}{r.stderr}"

    def crash(self) -> None:
        """Stops the server as a crash would (immediate: no checkpoint, sessions cut)."""
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def start(self) -> None:
        """Starts the crashed server again, on the same port, as the script did."""
        self._pg_ctl("-l", str(self.dir / "postgres.log"), "-w", "-t", "60", "-o",
                     f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                     "-c max_connections=300 -c fsync=on", "start")


@contextlib.contextmanager
def private_server():
    """A throwaway server started here for one test, whatever PACSGRID_PG_TEST_URL says."""
    if bindir() is None:
        msg = "no PostgreSQL binaries (apt: postgresql; scripts/install-test-deps.sh installs them)"
        if required():
            pytest.fail(msg + ", but PACSGRID_PG_TEST_REQUIRED is set")
        pytest.skip(msg)
    env = start_script()
    url = env["PACSGRID_PG_TEST_URL"]
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    try:
        yield PrivateServer(url, psql_path(), dir=Path(env["PACSGRID_PG_TEST_DIR"]), port=port)
    finally:
        subprocess.run([str(SCRIPT), "stop", env["PACSGRID_PG_TEST_DIR"]],
                       capture_output=True, timeout=120)
