"""A private PostgreSQL server for MLflow's backend store: own data dir, free port, own socket dir.

The Debian ``postgresql`` package provides the binaries (``/usr/lib/postgresql/<N>/bin``, sometimes
linked into ``/usr/local/bin``); :func:`find_bin_dir` finds them and :func:`install` adds the
package when we are root, as ``make browser`` does for Chromium. PostgreSQL refuses to run as root,
so as root every server command runs as the ``postgres`` system user (created if missing) through
``runuser``. The server listens on 127.0.0.1 only, with password (SCRAM) authentication, and keeps
its unix socket in the temp dir instead of the system's ``/var/run/postgresql``.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import run, wait_for

from itemsage.cluster.ports import free_port

SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
RUN_AS = "postgres"  # the Debian package's system user; created when missing


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here and no way to install them (the caller may skip)."""


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: PATH first, then the newest Debian one."""
    on_path = shutil.which("initdb")
    candidates = [Path(os.path.realpath(on_path)).parent] if on_path else []
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    for d in candidates:
        if all((d / tool).is_file() and os.access(d / tool, os.X_OK) for tool in SERVER_TOOLS):
            return d
    return None


def install(log: Path) -> Path:
    """``apt-get install postgresql`` (root only); returns the bin dir or raises PostgresUnavailable."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found and not root with apt-get "
            "to install them: `apt-get install postgresql` first"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(["apt-get", "update", "-qq"], env, log, timeout_s=600)
        run(["apt-get", "install", "-y", "-qq", "postgresql"], env, log, timeout_s=900)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        raise PostgresUnavailable(f"installing Debian's postgresql failed: {e}") from e
    found = find_bin_dir()
    if found is None:
        raise PostgresUnavailable(f"installed postgresql but found no initdb/pg_ctl/postgres (see {log})")
    return found


def _server_user(log: Path) -> str | None:
    """The user the server runs as: None (ourselves) unless we are root, then ``postgres``."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS], dict(os.environ), log, 60)
    return RUN_AS


@dataclass
class PostgresServer:
    """One PostgreSQL server under ``root`` (data, socket and log), stopped by :meth:`stop`."""

    root: Path
    env: dict[str, str]
    bin_dir: Path
    port: int = field(default_factory=free_port)
    user: str = "itemsage"
    password: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    run_as: str | None = None
    started: bool = False

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def uri(self, database: str) -> str:
        """SQLAlchemy URI of ``database`` over TCP on 127.0.0.1, naming the psycopg2 driver: since
        SQLAlchemy 2.1 a bare ``postgresql://`` means psycopg 3, which is not installed."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def redacted_uri(self, database: str) -> str:
        return self.uri(database).replace(self.password, "***")

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else cmd

    def start(self, timeout_s: float = 120.0) -> PostgresServer:
        """initdb, start on 127.0.0.1:``port`` and wait until it accepts connections."""
        cmd_log = self.root / "commands.log"
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_as = _server_user(cmd_log)
        for d in (self.data_dir, self.socket_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self.run_as:
            # The server user owns its directories; ``root`` becomes traversable but not listable
            # (0711). Its parents are the caller's business (a run dir under /tmp, made 0711).
            pw = pwd.getpwnam(self.run_as)
            self.log.touch()
            for p in (self.data_dir, self.socket_dir, pwfile, self.log):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self.root.chmod(0o711)
            probe = run(["runuser", "-u", self.run_as, "--", "test", "-w", str(self.data_dir)], self.env, cmd_log, 30, check=False)
            if probe.returncode != 0:
                raise PostgresUnavailable(
                    f"user {self.run_as} cannot reach {self.data_dir}: a parent directory is not traversable; "
                    "use a run directory under /tmp"
                )
        try:
            run(
                self._cmd("initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
                          "-A", "scram-sha-256", "-E", "UTF8", "--locale=C"),
                self.env, cmd_log, timeout_s,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        run(
            self._cmd("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log), "-o", options,
                      "-w", "-t", str(int(timeout_s)), "start"),
            self.env, cmd_log, timeout_s + 30,
        )
        self.started = True
        wait_for(lambda: self._connect("postgres"), timeout_s, f"PostgreSQL on 127.0.0.1:{self.port}")
        return self

    def _connect(self, database: str):  # noqa: ANN202 - psycopg2 connection
        try:
            import psycopg2
        except ImportError as e:  # pragma: no cover - the dev extra installs it
            raise PostgresUnavailable("psycopg2 missing: pip install -e '.[dev]' (psycopg2-binary)") from e
        try:
            return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                    dbname=database, connect_timeout=5)
        except psycopg2.OperationalError as e:
            raise ConnectionError(str(e).strip()) from e

    def create_database(self, name: str) -> str:
        """Create ``name`` and return its URI."""
        conn = self._connect("postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.uri(name)

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one read-only query (how a test checks what MLflow really stored)."""
        conn = self._connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Fast shutdown (running transactions are rolled back, clients disconnected)."""
        if not self.started:
            return
        run(self._cmd("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout_s)), "stop"),
            self.env, self.root / "commands.log", timeout_s + 30, check=False)
        self.started = False
