"""R_ping: the HTTP ceiling of the stack, ``GET /healthz`` with wrk, for each ASGI server.

    python -m loadtests.r_ping [--seconds 10] [--connections 32] [--workers 1]

For granian and uvicorn in turn: start ``gwallet serve`` on 127.0.0.1 (settings from the
environment, as in production: JSON access log at INFO, to a file here), warm up for 2 s,
run ``wrk -t1 -c<connections> -d<seconds>s --latency`` against /healthz, and record requests/s,
latency percentiles, errors, and the CPU the server processes and wrk used (to tell whether
the load generator was the limit). Prints a Markdown table for BENCHMARKS.md. Needs ``wrk``
(``apt-get install wrk``) and a database and Redis (GWALLET_DATABASE_URL / GWALLET_REDIS_URL,
or the embedded ones).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil

from gwallet.embedded import free_port

SERVERS = ("granian", "uvicorn")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, choices=range(1, 11), metavar="1..10")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    rows = [measure(server, args) for server in SERVERS]
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.seconds}s --latency http://127.0.0.1:PORT/healthz"
        f"  ({args.workers} worker{'s' if args.workers > 1 else ''}, {os.cpu_count()} cores)\n"
    )
    columns = ("server", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "server CPU", "wrk CPU")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = (
            row["server"],
            f"{row['rps']:,.0f}",
            row["p50"],
            row["p90"],
            row["p99"],
            row["errors"],
            f"{row['server_cpu']:.2f} cores",
            f"{row['wrk_cpu']:.2f} cores",
        )
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    return 0


def measure(server: str, args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix=f"r_ping-{server}-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gwallet.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--server",
            server,
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        _wait(url, process)
        _wrk(url, 2, args.connections)  # warm-up
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        before = sum(_cpu_seconds(p) for p in tree)
        started = time.monotonic()
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", url],
            stdout=subprocess.PIPE,
            text=True,
        )
        wrk_process = psutil.Process(wrk.pid)
        wrk_cpu = 0.0
        while wrk.poll() is None:
            try:
                wrk_cpu = _cpu_seconds(wrk_process)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        output = wrk.communicate()[0]
        elapsed = time.monotonic() - started
        after = sum(_cpu_seconds(p) for p in tree)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        os.unlink(log.name)
    return {
        "server": server,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1]),
        "p50": _percentile(output, "50"),
        "p90": _percentile(output, "90"),
        "p99": _percentile(output, "99"),
        "errors": _errors(output),
        "server_cpu": (after - before) / elapsed,
        "wrk_cpu": wrk_cpu / elapsed,
    }


def _wrk(url: str, seconds: int, connections: int) -> None:
    subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _percentile(output: str, which: str) -> str:
    match = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s)", output, re.MULTILINE)
    assert match, output
    value = float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
    return f"{value:.2f}"


def _errors(output: str) -> str:
    found = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: [^\n]+)", output)
    return "; ".join(found) or "0"


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _wait(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gwallet serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gwallet serve did not answer")



if __name__ == "__main__":
    sys.exit(main())
