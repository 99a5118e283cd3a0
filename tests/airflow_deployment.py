"""Real Airflow components as subprocesses, for the browser and deployment tests.

:class:`AirflowDeployment` owns a temporary ``AIRFLOW_HOME`` with its own metadata database, starts
``airflow api-server``, ``scheduler`` and ``dag-processor`` on loopback (each in its own process group, so
stopping one also stops the task processes LocalExecutor forked from it), and talks to the REST API with a
token from SimpleAuthManager (``simple_auth_manager_all_admins``: no login form). Every component it started
is stopped when the ``with`` block ends, whether the test passed or not.

The metadata database is a fresh PostgreSQL database on the test server (dropped at the end) whenever that
server answers, as in a real deployment: several components writing one SQLite file at once made the
REST API answer 500 "Database error" (SQLite's lock) while the scheduler wrote, which failed CI. SQLite is
the fallback only where no PostgreSQL answers (a developer's laptop); CI always has PostgreSQL.

The environment of the components is built from scratch: ``AIRFLOW_*`` variables of the test process
(``tests/conftest.py`` points them at the suite's own home) are not inherited.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import requests

#: The PostgreSQL server that holds each installation's metadata database (libpq conninfo; its ``dbname``
#: is only where ``CREATE DATABASE`` runs).
METADATA_SERVER_DSN = os.environ.get(
    "SEGMENT_PROFILES_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)

#: Seconds a component may take to answer after it is started (the api-server imports all of Airflow).
STARTUP_TIMEOUT_S = 90.0


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range (32768 and up on
    Linux): a port the kernel hands out for ``bind(0)`` can be taken by any outgoing connection before the
    server binds it, which made the api-server fail with "address already in use" on a busy machine.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port between 20000 and 32000 on 127.0.0.1")


def chromium_problem() -> str | None:
    """``None`` when headless Chromium can be driven by Playwright here, else the reason it cannot."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (it is in the test extra: pip install -e '.[test]')"
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing (Debian: apt-get install chromium; .ci/run installs it)"
    return None


#: Debian's Chromium package; Playwright cannot download its own browsers on this network.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class AirflowDeployment:
    """
    One Airflow installation in a temporary home: metadata database, components, REST API.

    :param home: empty directory to use as ``AIRFLOW_HOME``.
    :param dags_folder: ``[core] dags_folder`` of every component.
    :param env: more environment variables for every component (connections, settings of the DAGs).
    """

    def __init__(self, home: Path, dags_folder: Path, env: Mapping[str, str] | None = None) -> None:
        self.home = home
        self._postgres_database: str | None = None
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        self.env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self._metadata_database(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                # Every component must sign and check the same task and UI tokens.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            }
        )
        self.env.update(env or {})
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None

    def _metadata_database(self, home: Path) -> str:
        """SQLAlchemy URL of a new PostgreSQL database for this installation, or of a SQLite file."""
        try:
            import psycopg
        except ImportError:
            return f"sqlite:///{home}/airflow.db"
        name = f"airflow_deploy_{secrets.token_hex(6)}"
        try:
            with psycopg.connect(METADATA_SERVER_DSN, connect_timeout=3, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
        except psycopg.Error:
            return f"sqlite:///{home}/airflow.db"
        self._postgres_database = name
        params = psycopg.conninfo.conninfo_to_dict(METADATA_SERVER_DSN)
        return (
            f"postgresql+psycopg2://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
            f"{params.get('port', 5432)}/{name}"
        )

    @property
    def metadata_backend(self) -> str:
        """``"postgresql"`` or ``"sqlite"``: what holds this installation's metadata."""
        return "postgresql" if self._postgres_database else "sqlite"

    def _drop_metadata_database(self) -> None:
        if not self._postgres_database:
            return
        import psycopg

        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(METADATA_SERVER_DSN, connect_timeout=3, autocommit=True) as conn,
        ):
            conn.execute(f"DROP DATABASE IF EXISTS {self._postgres_database} WITH (FORCE)")
        self._postgres_database = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> AirflowDeployment:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def airflow(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run one ``airflow`` CLI command in this installation and return its result."""
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def migrate(self) -> None:
        """Create the metadata database."""
        result = self.airflow("db", "migrate")
        if result.returncode != 0:
            raise RuntimeError(
                f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )

    def start(self, *components: str) -> None:
        """
        Start components (``api-server``, ``scheduler``, ``dag-processor``) and wait for the API to answer.

        :param components: CLI names of the components.
        """
        # The api-server first, and answering, before anything that runs tasks: a task's supervisor talks
        # to the execution API at once, and on a loaded machine the api-server takes tens of seconds to
        # start (a sensor failed with "connection refused" before it listened).
        ordered = sorted(components, key=lambda component: component != "api-server")
        for component in ordered:
            log = open(self.log_path(component), "wb")  # noqa: SIM115 - the child process writes to it
            args = [sys.executable, "-m", "airflow", component]
            if component == "api-server":
                args += ["--host", "127.0.0.1", "--port", str(self.port)]
            self._processes[component] = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            log.close()
            if component == "api-server":
                self.wait_for(self._api_answers, f"the api-server to answer on {self.base_url}")

    def start_named(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> None:
        """
        Start one more component under its own name, with more environment variables (a second Celery
        worker: ``start_named("worker-b", ["celery", "worker", ...], {...})``). :meth:`stop` stops it too.

        :param name: the component's name here and of its log file.
        :param args: the ``airflow`` CLI arguments.
        :param env: variables added to (or replacing) the installation's environment for this component.
        """
        # Appended to: a component started again under its name keeps the earlier output.
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - the child process writes to it
        self._processes[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill(self, name: str) -> None:
        """SIGKILL a component and every process of its session at once, as when its machine is lost."""
        process = self._processes.pop(name)
        for pid in [process.pid, *_session_members(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        """
        Stop every component started here and every process it started; kill what outlives 20 s.

        Each component leads its own session. LocalExecutor's task processes stay in that session but
        get process groups of their own, so the session is what finds them.
        """
        for process in self._processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self._processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in self._processes.values():
            for pid in _session_members(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
        deadline = time.monotonic() + 10
        while any(_session_members(p.pid) for p in self._processes.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._drop_metadata_database()

    def log_path(self, component: str) -> Path:
        return self.home / f"{component}.log"

    def logs(self) -> str:
        """Output of every component and every task log, for assertions and failure messages."""
        parts = [p.read_text(errors="replace") for p in sorted(self.home.glob("*.log"))]
        parts += [
            p.read_text(errors="replace") for p in sorted((self.home / "logs").rglob("*")) if p.is_file()
        ]
        return "\n".join(parts)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of each component's output (for failure messages)."""
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-chars:]}"
            for p in sorted(self.home.glob("*.log"))
        )

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = STARTUP_TIMEOUT_S) -> Any:
        """
        Poll ``predicate`` until it returns something truthy; fail with the components' logs otherwise.

        :raises AssertionError: on timeout, or when a component exited.
        """
        deadline = time.monotonic() + timeout
        while True:
            exited = {name: p.returncode for name, p in self._processes.items() if p.poll() is not None}
            if exited:
                raise AssertionError(
                    f"Airflow components exited {exited} waiting for {what}\n{self.log_tail()}"
                )
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}\n{self.log_tail()}")
            time.sleep(0.25)

    # -- REST API ------------------------------------------------------------------------------------
    def _api_answers(self) -> bool:
        try:
            return requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    @property
    def token(self) -> str:
        """A REST API token of SimpleAuthManager's all-admins mode."""
        if self._token is None:
            reply = requests.get(f"{self.base_url}/auth/token", timeout=10)
            reply.raise_for_status()
            self._token = reply.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """
        Call the REST API.

        :param path: path after the base URL, e.g. ``/api/v2/dags``; parts taken from values (run ids)
            must be quoted with :func:`q`.
        """
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)


def q(value: str) -> str:
    """``value`` quoted for one path segment of a REST URL (run ids hold ``:`` and ``+``)."""
    return quote(value, safe="")


def _session_members(session_id: int) -> list[int]:
    """Ids of the live processes in a session (from ``/proc``; the session id is its leader's pid)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        # After the command name: state, ppid, pgrp, session.
        if int(fields[3]) == session_id and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def copy_tree(source: Path, target: Path) -> Path:
    """Copy a folder of DAG files (without ``__pycache__``) and return the copy."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target
