"""Serving an app for tests: real uvicorn on 127.0.0.1, a free port, its own thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from litestar import Litestar

from gwallet.embedded import free_port  # noqa: F401 - the tests take it from here

_START_TIMEOUT_SECONDS = 30.0


@contextmanager
def serving(app: Litestar) -> Iterator[str]:
    """Run ``app`` (lifespan included) until the block ends; yield its base URL."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; with proto 0
    # every response waited ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # The server keeps an idle connection longer than httpx's client does (5 s): with equal
    # timeouts the server could close one just as the client reused it (httpx.ReadError, seen
    # once in CI under load).
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False,
                            timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start; see the log above")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


