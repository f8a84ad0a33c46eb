"""One bounded, headless load run against a locally started service, with its references.

    python -m loadtests.run --scenario lunch|spike|rush [--seconds S] [--users U]
        [--citizens N] [--merchants M] [--workers W] [--locust-processes P] [--out DIR]
        [--database-url ADMIN_URL] [--redis-url URL] [--keep]

In order, on this machine (127.0.0.1 only), every step bounded in time:

1. a fresh database ``gwallet_load_<scenario>_<hex>`` beside ``--database-url``, seeded by
   ``python -m loadtests.seed`` (citizens topped up, sessions, PINs, enrolled in one active
   funded half-half program; approved merchants with API keys; for ``rush`` the quota is the
   enrolled plus ``--rush-places``), keys in a private run directory (``GWALLET_DATA_DIR``);
2. R_tpcb: ``pgbench`` in a scratch database (``loadtests.ledger_bench.run_pgbench``);
3. the service: ``gwallet serve --workers W`` on a free port, on the seeded database and
   ``--redis-url`` (a Redis database of its own: it is flushed before and after), with the
   seed's keys; waits for ``/readyz``;
4. R_ping: the same Locust setup (``--processes P``) against ``GET /healthz``;
5. the scenario: ``locust -f loadtests/locustfile.py --headless`` with the scenario's shape
   (``loadtests.shapes``) and users (``loadtests.locustfile``), CSV and HTML into ``--out``;
6. stops the service and checks the invariants (``loadtests.invariants``);
7. prints ONE summary (also ``--out/summary.json``): offered load, achieved payments/s,
   p50/p95/p99 of paying, errors, fast refusals, R_ping and R_tpcb of this run and the ratios
   to them, CPU used by the service, Locust and the whole machine (is the load generator the
   limit?), and the service log's errors and 5xx;
8. drops the databases (unless ``--keep``).

Exit 0 if every invariant holds, 1 if one fails, 2 if the run itself could not be made.
Locust runs only as a subprocess (it monkey-patches with gevent on import).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gwallet.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/5"
MAX_SECONDS = 3600  # a load run is bounded: an hour at most
PAY = ("POST", "/v1/citizen/payments")
ENROL = "/v1/citizen/programs/{program_id}/enrolment"

SCENARIOS: dict[str, dict[str, Any]] = {
    # users: the shape's base users; classes: the Locust users that walk.
    "lunch": {"users": 100, "classes": ["CitizenPayer", "WalletReader", "MerchantPoller"]},
    "spike": {"users": 20, "classes": ["CitizenPayer", "WalletReader", "MerchantPoller"]},
    "rush": {"users": 100, "classes": ["RushCitizen"]},
}


class RunFailed(Exception):
    """The run could not be made (seed, service or Locust failed): exit 2."""


# -- small helpers -----------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    from loadtests.ledger_bench import with_database as replace

    return replace(url, name)


async def _admin(admin_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database(admin_url: str, name: str) -> str:
    assert re.fullmatch(r"gwallet_load_[a-z0-9_]+", name), name
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    return with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    assert re.fullmatch(r"gwallet_load_[a-z0-9_]+", name), name
    asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()



def say(text: str) -> None:
    print(f"[loadtests.run] {text}", file=sys.stderr, flush=True)


class CpuMeter:
    """CPU seconds used by process trees (sampled: children that come and go are counted)
    and by the whole machine, over an interval."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.seen: dict[str, dict[int, float]] = {name: {} for name in roots}
        # Seconds each thread was runnable but waited for a CPU (/proc/.../schedstat).
        self.delays: dict[str, dict[tuple[int, int], float]] = {name: {} for name in roots}
        self.postgres: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.seconds = 0.0
        self.machine_cores = 0.0

    def _sample(self) -> None:
        for name, pid in self.roots.items():
            try:
                root = psutil.Process(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in tree:
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                self.seen[name][process.pid] = times.user + times.system
                self.delays[name].update(_run_delays(process.pid))
        for process in psutil.process_iter(["name"]):
            if process.info["name"] == "postgres":
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                self.postgres[process.pid] = times.user + times.system

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def __enter__(self) -> CpuMeter:
        self._sample()
        self.base = {name: dict(values) for name, values in self.seen.items()}
        self.base_delays = {name: dict(values) for name, values in self.delays.items()}
        self.base_postgres = dict(self.postgres)
        self._machine = psutil.cpu_times()
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = time.monotonic() - self._started
        machine = psutil.cpu_times()
        busy = (sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)) - (
            sum(self._machine) - self._machine.idle - getattr(self._machine, "iowait", 0.0))
        self.machine_cores = busy / max(self.seconds, 1e-9)

    def cores(self, name: str) -> float:
        used = sum(v - self.base[name].get(pid, 0.0) for pid, v in self.seen[name].items())
        return used / max(self.seconds, 1e-9)

    def waiting_for_cpu(self, name: str) -> float:
        """Threads of the tree runnable but not running, on average (0: never starved)."""
        waited = sum(v - self.base_delays[name].get(key, 0.0)
                     for key, v in self.delays[name].items())
        return waited / max(self.seconds, 1e-9)

    def postgres_cores(self) -> float:
        used = sum(v - self.base_postgres.get(pid, 0.0) for pid, v in self.postgres.items())
        return used / max(self.seconds, 1e-9)


class DbWaits:
    """What the run database's backends do, sampled from ``pg_stat_activity`` every 0.2 s:
    how many are busy, what they wait on (no wait event: on CPU) and which statements."""

    QUERY = """
    SELECT state, coalesce(wait_event_type || ':' || wait_event, 'CPU') AS wait,
           left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query
    FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND backend_type = 'client backend'
    """

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.samples = 0
        self.connected = 0
        self.states: Counter[str] = Counter()
        self.waits: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), daemon=True)

    async def _loop(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url)
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(self.QUERY)
                self.samples += 1
                self.connected += len(rows)
                for row in rows:
                    self.states[row["state"] or "?"] += 1
                    if row["state"] == "idle in transaction":
                        # Inside a transaction, waiting for the service: its connection and
                        # locks are held while the service does something else.
                        self.waits["service (idle in transaction)"] += 1
                        self.statements[row["query"]] += 1
                    elif row["state"] != "idle":
                        self.waits[row["wait"]] += 1
                        self.statements[row["query"]] += 1
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    def __enter__(self) -> DbWaits:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def report(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        busy = sum(self.waits.values())
        return {
            "samples": self.samples,
            "connections_avg": round(self.connected / n, 1),
            "busy_backends_avg": round(busy / n, 2),
            "states_avg": {k: round(v / n, 2) for k, v in self.states.most_common()},
            "waits_share": {k: round(v / max(busy, 1), 3) for k, v in self.waits.most_common(8)},
            "busy_statements_avg": {k: round(v / n, 2)
                                    for k, v in self.statements.most_common(6)},
        }


def _run_delays(pid: int) -> dict[tuple[int, int], float]:
    """Per thread of ``pid``: seconds spent runnable on a run queue (Linux schedstat)."""
    out: dict[tuple[int, int], float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as file:
                out[(pid, int(tid))] = int(file.read().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return out


# -- the service --------------------------------------------------------------------------------


class Service:
    """``gwallet serve`` in its own session (process group), stopped by SIGINT, then killed."""

    def __init__(self, env: dict[str, str], workers: int, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gwallet.cli", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(workers)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            start_new_session=True,
        )

    def wait_ready(self, timeout_seconds: float = 120.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_seconds:
            if self.process.poll() is not None:
                raise RunFailed(f"gwallet serve exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.2)
        raise RunFailed(f"gwallet serve was not ready within {timeout_seconds:g} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                children = psutil.Process(self.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            for child in children:  # workers that outlived their server
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
        self.log.close()


# -- Locust -------------------------------------------------------------------------------------


def run_locust(
    *, scenario: str, classes: list[str], users: int, seconds: float, processes: int,
    host: str, prefix: Path, env: dict[str, str], html: bool, cpu_roots: dict[str, int],
) -> tuple[float, CpuMeter]:
    """Run Locust headless with the scenario's shape; returns (wall seconds, CPU used)."""
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "--csv", str(prefix), "--csv-full-history",
        "--loglevel", "WARNING", "--stop-timeout", "5", "--exit-code-on-error", "0",
        "--only-summary",
    ]
    if html:
        command += ["--html", str(prefix) + ".html"]
    if processes > 1:
        command += ["--processes", str(processes)]
    command += classes
    locust_env = {**env, "GWALLET_LOAD_SCENARIO": scenario, "GWALLET_LOAD_USERS": str(users),
                  "GWALLET_LOAD_SECONDS": str(seconds)}
    log_path = prefix.with_name(prefix.name + ".log")
    log = log_path.open("wb")
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=locust_env, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=log, start_new_session=True)
    try:
        with CpuMeter({**cpu_roots, "locust": process.pid}) as meter:
            try:
                code = process.wait(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
                raise RunFailed(f"locust did not stop within {seconds + 60:g} s") from None
    finally:
        log.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RunFailed(f"locust exited with {code}:\n{tail}")
    return time.monotonic() - started, meter


@dataclass
class Row:
    type: str
    name: str
    count: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    max: float


def read_stats(prefix: Path) -> list[Row]:
    rows = []
    with open(f"{prefix}_stats.csv", newline="") as file:
        for r in csv.DictReader(file):
            rows.append(Row(
                type=r["Type"], name=r["Name"], count=int(r["Request Count"]),
                failures=int(r["Failure Count"]), rps=float(r["Requests/s"]),
                p50=_ms(r["50%"]), p95=_ms(r["95%"]), p99=_ms(r["99%"]),
                max=round(_ms(r["Max Response Time"])),
            ))
    return rows


def _ms(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0  # "N/A"


def read_failures(prefix: Path) -> list[tuple[str, str, str, int]]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    with path.open(newline="") as file:
        return sorted(
            ((r["Method"], r["Name"], r["Error"], int(r["Occurrences"]))
             for r in csv.DictReader(file)),
            key=lambda f: -f[3],
        )


def peak_rate(prefix: Path, type_: str, name: str) -> float:
    """The highest 'Requests/s' Locust reported for one endpoint during the run."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return 0.0
    best = 0.0
    with path.open(newline="") as file:
        for r in csv.DictReader(file):
            if r.get("Type") == type_ and r.get("Name") == name:
                try:
                    best = max(best, float(r["Requests/s"]))
                except (KeyError, ValueError):
                    pass
    return best


def service_log_findings(path: Path) -> dict[str, Any]:
    """Errors logged by the service, and its own view of statuses and durations per route."""
    errors: Counter[str] = Counter()
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    durations: dict[str, list[float]] = defaultdict(list)
    examples: dict[str, str] = {}
    if not path.exists():
        return {}
    with path.open(errors="replace") as file:
        for line in file:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            if entry.get("msg") == "request" and "route" in entry:
                route = f"{entry.get('method')} {entry['route']}"
                statuses[route][int(entry.get("status", 0))] += 1
                durations[route].append(float(entry.get("duration_ms", 0.0)))
            elif entry.get("level") in ("error", "critical"):
                message = f"{entry.get('logger')}: {entry.get('msg')}"[:160]
                errors[message] += 1
                if message not in examples:
                    examples[message] = str(entry.get("exc", ""))[-600:]
    routes = {}
    for route, values in durations.items():
        values.sort()
        routes[route] = {
            "count": len(values),
            "p50_ms": round(values[len(values) // 2], 1),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
            "statuses": dict(sorted(statuses[route].items())),
        }
    return {"errors": dict(errors.most_common(10)), "error_examples": examples, "routes": routes}


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Summary:
    scenario: str
    machine: str
    settings: dict[str, Any]
    seed_seconds: float = 0.0
    r_tpcb_tps: float = 0.0
    r_ping_rps: float = 0.0
    r_ping: dict[str, Any] = field(default_factory=dict)
    offered: dict[str, Any] = field(default_factory=dict)
    payments: dict[str, Any] = field(default_factory=dict)
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    rush: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    database: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    service_log: dict[str, Any] = field(default_factory=dict)
    invariants: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the scenario")
    parser.add_argument("--users", type=int, help="base users of the shape "
                        "(default: lunch 100, spike 20 (x10 at the peak), rush 100)")
    parser.add_argument("--think-seconds", type=float, default=1.0,
                        help="think time between journeys, uniform in 0..this")
    parser.add_argument("--citizens", type=int, default=10_000)
    parser.add_argument("--merchants", type=int, default=1_000)
    parser.add_argument("--rush-places", type=int,
                        help="rush: places left in the quota beyond the seeded enrolments "
                        "(default: 20 per second of the run)")
    parser.add_argument("--workers", type=int, default=2, help="service worker processes")
    parser.add_argument("--locust-processes", type=int, default=1)
    parser.add_argument("--db-pool-max", type=int, default=8,
                        help="PostgreSQL connections per service worker (the server is shared)")
    parser.add_argument("--log-level", default="INFO", help="the service's GWALLET_LOG_LEVEL "
                        "(INFO: an access line per request, as in production)")
    parser.add_argument("--tpcb-seconds", type=int, default=20)
    parser.add_argument("--ping-seconds", type=float, default=10.0)
    parser.add_argument("--ping-users", type=int, default=32)
    parser.add_argument("--out", type=Path, help="reports directory "
                        "(default loadtests/results/<scenario>-<time>)")
    parser.add_argument("--database-url", default=os.environ.get(
        "GWALLET_LOAD_ADMIN_DATABASE_URL", DEFAULT_ADMIN_URL),
        help="a maintenance database; the run creates its databases beside it")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help="a Redis database for this run only: it is flushed")
    parser.add_argument("--keep", action="store_true",
                        help="keep the databases and the run directory (keys, manifest)")
    parser.add_argument("--quiet", action="store_true", help="no seeding progress bars")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= MAX_SECONDS or not 0 < args.ping_seconds <= 60 \
            or not 1 <= args.tpcb_seconds <= 60:
        parser.error(f"--seconds is 0..{MAX_SECONDS}, --ping-seconds 0..60, --tpcb-seconds 1..60")
    if min(args.citizens, args.merchants, args.workers, args.locust_processes,
           args.ping_users, args.db_pool_max, args.users or 1) < 1:
        parser.error("sizes must be positive")
    try:
        summary, ok = run(args)
    except Exception as failure:  # noqa: BLE001 - exit 2: the run itself could not be made
        say(f"FAILED: {type(failure).__name__}: {failure}")
        return 2
    print(render(summary))
    return 0 if ok else 1


def run(args: argparse.Namespace) -> tuple[Summary, bool]:
    from loadtests.invariants import check_invariants
    from loadtests.ledger_bench import recreate_database, run_pgbench

    scenario = SCENARIOS[args.scenario]
    users = args.users or scenario["users"]
    out: Path = args.out or ROOT / "loadtests" / "results" / (
        f"{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(3)
    db_name = f"gwallet_load_{args.scenario}_{token}"
    tpcb_name = f"gwallet_load_pgbench_{token}"
    # The keys and the manifest: kept beside the reports with --keep (to serve the kept
    # database again), else a private temporary directory removed at the end.
    run_dir = out / "run" if args.keep else Path(tempfile.mkdtemp(prefix="gwallet_load_"))
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    signing_key = Ed25519PrivateKey.generate()
    signing_hex = signing_key.private_bytes(Encoding.Raw, PrivateFormat.Raw,
                                            NoEncryption()).hex()
    rush_places = args.rush_places if args.rush_places is not None else max(
        10, int(args.seconds * 20))
    summary = Summary(
        scenario=args.scenario,
        machine=f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB "
                f"(shared with other test runs)",
        settings={"seconds": args.seconds, "users": users, "think_seconds": args.think_seconds,
                  "citizens": args.citizens, "merchants": args.merchants,
                  "workers": args.workers, "locust_processes": args.locust_processes,
                  "db_pool_max": args.db_pool_max, "log_level": args.log_level,
                  "database": db_name,
                  "classes": scenario["classes"]}
        | ({"rush_places": rush_places} if args.scenario == "rush" else {}),
    )
    # Written now and again at the end: whoever runs this learns the database's name even
    # if the run fails half-way (with --keep it stays to be looked at, or dropped by hand).
    (out / "summary.json").write_text(json.dumps(summary.__dict__, indent=2, default=str))
    database_url = ""
    service: Service | None = None
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    try:
        database_url = create_database(args.database_url, db_name)
        flush_redis(args.redis_url)
        env.update({
            "GWALLET_DATABASE_URL": database_url,
            "GWALLET_REDIS_URL": args.redis_url,
            "GWALLET_DATA_DIR": str(run_dir / "data"),
            "GWALLET_LEDGER_SIGNING_KEY_HEX": signing_hex,
            "GWALLET_DB_POOL_MIN_SIZE": "1",
            "GWALLET_DB_POOL_MAX_SIZE": str(args.db_pool_max),
            "GWALLET_LOG_LEVEL": args.log_level,
            "GWALLET_LOG_JSON": "true",
        })
        manifest_path = run_dir / "manifest.json"

        # 1. seed
        seed_command = [
            sys.executable, "-m", "loadtests.seed", "--database-url", database_url,
            "--citizens", str(args.citizens), "--merchants", str(args.merchants),
            "--manifest", str(manifest_path),
        ]
        if args.scenario == "rush":
            seed_command += ["--quota", str(args.citizens + rush_places)]
        if args.quiet:
            seed_command.append("--quiet")
        say(f"seeding {args.citizens:,} citizens and {args.merchants:,} merchants "
            f"into {db_name} ...")
        started = time.monotonic()
        seeded = subprocess.run(seed_command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, text=True, timeout=3600)
        summary.seed_seconds = round(time.monotonic() - started, 1)
        if seeded.returncode != 0 or not manifest_path.exists():
            raise RunFailed(f"the seed exited with {seeded.returncode}: {seeded.stdout[-2000:]}")
        manifest = json.loads(manifest_path.read_text())
        env["GWALLET_LOAD_MANIFEST"] = str(manifest_path)
        env["GWALLET_LOAD_THINK_SECONDS"] = str(args.think_seconds)

        # 2. R_tpcb, before the service runs
        say(f"R_tpcb: pgbench for {args.tpcb_seconds} s ...")
        tpcb_url = asyncio.run(recreate_database(args.database_url, tpcb_name))
        try:
            summary.r_tpcb_tps = round(run_pgbench(tpcb_url, args.tpcb_seconds), 1)
        finally:
            drop_database(args.database_url, tpcb_name)

        # 3. the service
        service = Service(env, args.workers, out / "service.log")
        ready = service.wait_ready()
        say(f"service ready on {service.url} in {ready:.1f} s ({args.workers} workers)")

        # 4. R_ping, the same Locust setup against /healthz
        say(f"R_ping: {args.ping_users} users on /healthz for {args.ping_seconds:g} s ...")
        ping_prefix = out / "ping"
        ping_seconds, ping_cpu = run_locust(
            scenario="ping", classes=["PingUser"], users=args.ping_users,
            seconds=args.ping_seconds, processes=args.locust_processes, host=service.url,
            prefix=ping_prefix, env=env, html=False, cpu_roots={"service": service.process.pid},
        )
        ping_rows = read_stats(ping_prefix)
        ping_total = next(r for r in ping_rows if r.name == "Aggregated")
        summary.r_ping_rps = round(ping_total.count / args.ping_seconds, 1)
        summary.r_ping = {"users": args.ping_users, "seconds": args.ping_seconds,
                          "requests": ping_total.count, "failures": ping_total.failures,
                          "p50_ms": ping_total.p50, "p99_ms": ping_total.p99,
                          "service_cores": round(ping_cpu.cores("service"), 2),
                          "locust_cores": round(ping_cpu.cores("locust"), 2),
                          "machine_cores": round(ping_cpu.machine_cores, 2)}

        # 5. the scenario
        say(f"scenario {args.scenario}: {users} base users for {args.seconds:g} s ...")
        prefix = out / "locust"
        with DbWaits(database_url) as waits:
            _, cpu = run_locust(
                scenario=args.scenario, classes=scenario["classes"], users=users,
                seconds=args.seconds, processes=args.locust_processes, host=service.url,
                prefix=prefix, env=env, html=True, cpu_roots={"service": service.process.pid},
            )
        summary.database = waits.report()
        summary.cpu = {"service_cores": round(cpu.cores("service"), 2),
                       "service_waiting_for_cpu": round(cpu.waiting_for_cpu("service"), 2),
                       "locust_cores": round(cpu.cores("locust"), 2),
                       "locust_waiting_for_cpu": round(cpu.waiting_for_cpu("locust"), 2),
                       "postgres_cores_all_databases": round(cpu.postgres_cores(), 2),
                       "machine_cores": round(cpu.machine_cores, 2),
                       "machine_cores_total": float(os.cpu_count() or 0)}
        service.stop()
        service = None
        summarize_locust(summary, prefix, args.seconds, args.locust_processes)
        summary.service_log = service_log_findings(out / "service.log")
        summary.reports = {"stats_csv": f"{prefix}_stats.csv",
                           "failures_csv": f"{prefix}_failures.csv",
                           "history_csv": f"{prefix}_stats_history.csv",
                           "html": f"{prefix}.html", "service_log": str(out / "service.log"),
                           "locust_log": f"{prefix}.log"}

        # 6. invariants
        say("checking the invariants ...")
        full = [manifest["program_id"]] if summary.expected.get(
            f"{ENROL} [quota_exhausted]") else []
        report = asyncio.run(check_invariants(database_url, signing_key.public_key(),
                                              expect_full=full))
        summary.invariants = report.as_dict() | {"lines": report.lines()}
        if args.scenario == "rush":
            summary.rush["quota"] = args.citizens + rush_places
            summary.rush["enrolled_in_db"] = report.counts.get("enrolments")
            summary.rush["citizens_in_db"] = report.counts.get("citizens")
        db_payments = report.counts.get("payments", 0)
        summary.payments["in_database"] = db_payments
        summary.payments["db_per_second"] = round(db_payments / args.seconds, 1)
        (out / "summary.json").write_text(json.dumps(summary.__dict__, indent=2, default=str))
        return summary, report.ok
    finally:
        if service is not None:
            service.stop()
        try:
            flush_redis(args.redis_url)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on
            say(f"could not flush {args.redis_url}: {exc}")
        if args.keep:
            say(f"kept database {db_name} and run directory {run_dir} (keys, manifest)")
        else:
            if database_url:
                drop_database(args.database_url, db_name)
            shutil.rmtree(run_dir, ignore_errors=True)


def summarize_locust(summary: Summary, prefix: Path, seconds: float, processes: int) -> None:
    rows = read_stats(prefix)
    total = next(r for r in rows if r.name == "Aggregated")
    named = [r for r in rows if r.name != "Aggregated"]
    pay = next((r for r in named if (r.type, r.name) == PAY), None)
    retried = next((r for r in named if (r.type, r.name) == (PAY[0], PAY[1] + " (retry)")), None)
    users_peak = int(summary.settings["users"]) * (10 if summary.scenario == "spike" else 1)
    summary.offered = {
        "users_base": summary.settings["users"], "users_peak": users_peak,
        "locust_processes": processes, "requests": total.count,
        "requests_per_second": round(total.count / seconds, 1),
    }
    ok_payments = sum(r.count - r.failures for r in (pay, retried) if r is not None)
    summary.payments.update({
        "succeeded": ok_payments,
        "failed": sum(r.failures for r in (pay, retried) if r is not None),
        "per_second": round(ok_payments / seconds, 1),
        "peak_per_second": round(peak_rate(prefix, *PAY), 1),
        "p50_ms": pay.p50 if pay else None, "p95_ms": pay.p95 if pay else None,
        "p99_ms": pay.p99 if pay else None, "max_ms": pay.max if pay else None,
    })
    summary.endpoints = [
        {"type": r.type, "name": r.name, "count": r.count, "failures": r.failures,
         "rps": round(r.count / seconds, 1), "p50_ms": r.p50, "p95_ms": r.p95,
         "p99_ms": r.p99, "max_ms": r.max}
        for r in sorted(named, key=lambda r: (r.type, r.name))
    ]
    failures = read_failures(prefix)
    failed = sum(r.failures for r in named)
    summary.errors = {
        "requests_failed": failed,
        "rate": round(failed / max(total.count, 1), 5),
        "top": [{"method": m, "name": n, "error": e[:200], "count": c}
                for m, n, e, c in failures[:10]],
    }
    summary.refused = {r.name: r.count for r in named if r.type == "REFUSED"}
    summary.expected = {r.name: r.count for r in named if r.type == "EXPECTED"}
    if summary.scenario == "rush":
        by_name = {(r.type, r.name): r for r in named}
        registered = by_name.get(("POST", "/v1/citizen/registrations"))
        enrolled = by_name.get(("POST", ENROL))
        summary.rush = {
            "registrations": (registered.count - registered.failures) if registered else 0,
            "enrolments_201_or_200": (enrolled.count - enrolled.failures) if enrolled else 0,
            "quota_exhausted": summary.expected.get(f"{ENROL} [quota_exhausted]", 0),
        }
    tpcb, ping = summary.r_tpcb_tps, summary.r_ping_rps
    summary.ratios = {
        "payments_per_s_over_r_tpcb": round(summary.payments["per_second"] / tpcb, 3) if tpcb
        else 0.0,
        "requests_per_s_over_r_ping": round(summary.offered["requests_per_second"] / ping, 3)
        if ping else 0.0,
    }


def render(s: Summary) -> str:
    p, o, c, e = s.payments, s.offered, s.cpu, s.errors
    lines = [
        f"== G-Wallet load run: {s.scenario}, {s.settings['seconds']:g} s, "
        f"{s.settings['citizens']:,} citizens, {s.settings['merchants']:,} merchants, "
        f"{s.settings['workers']} service workers, {s.settings['locust_processes']} Locust "
        f"process(es); machine {s.machine} ==",
        f"offered load   {o['users_base']} users (peak {o['users_peak']}), "
        f"{o['requests']:,} requests = {o['requests_per_second']:,.1f} req/s sent "
        + ("(no think time: each user is one citizen after another)" if s.scenario == "rush"
           else f"(think time 0..{s.settings['think_seconds']:g} s between journeys)"),
        (f"payments       {p['succeeded']:,} ok = {p['per_second']:,.1f}/s achieved "
         + (f"(best 10-s window {p['peak_per_second']:,.1f}/s; " if s.settings["seconds"] >= 20
            else "(") + f"{p.get('in_database', 0):,} rows in the database); "
         f"pay p50 {p['p50_ms']:g} ms, p95 {p['p95_ms']:g} ms, p99 {p['p99_ms']:g} ms, "
         f"max {p['max_ms']:g} ms" if p.get("p50_ms") is not None else
         "payments       none in this scenario"),
        f"errors         {e['requests_failed']:,} failed requests ({e['rate']:.3%})"
        + "".join(f"\n                 {f['count']:>6} x {f['method']} {f['name']}: {f['error']}"
                  for f in e["top"][:6]),
        "fast refusals  " + (", ".join(f"{n}: {k:,}" for n, k in s.refused.items()) or "none")
        + " (429/503 with Retry-After)",
        "expected       " + (", ".join(f"{n}: {k:,}" for n, k in s.expected.items()) or "none")
        + " (business refusals)",
    ]
    if s.rush:
        r = s.rush
        lines.append(
            f"rush           {r['registrations']:,} registered, {r['enrolments_201_or_200']:,} "
            f"enrolled, {r['quota_exhausted']:,} told quota_exhausted; database: "
            f"{r.get('enrolled_in_db') or 0:,} active enrolments, quota {r.get('quota') or 0:,}")
    lines += [
        f"references     R_tpcb {s.r_tpcb_tps:,.0f} tps (pgbench -c 16 -j 2, this run); "
        f"R_ping {s.r_ping_rps:,.0f} req/s (GET /healthz, {s.r_ping.get('users')} users, same "
        f"Locust setup; service {s.r_ping.get('service_cores')} cores, Locust "
        f"{s.r_ping.get('locust_cores')} cores)",
        f"ratios         payments/s / R_tpcb = {s.ratios['payments_per_s_over_r_tpcb']:.3f}; "
        f"requests/s / R_ping = {s.ratios['requests_per_s_over_r_ping']:.3f}",
        f"cpu (cores)    service {c['service_cores']} (+ {c['service_waiting_for_cpu']} threads "
        f"runnable but waiting for a CPU), Locust {c['locust_cores']} (+ "
        f"{c['locust_waiting_for_cpu']} waiting; of {s.settings['locust_processes']} "
        f"process(es): near 1.0 each means the load generator was the limit), postgres (all "
        f"databases) {c['postgres_cores_all_databases']}, whole machine {c['machine_cores']} of "
        f"{c['machine_cores_total']:g}",
        f"database       {s.database.get('busy_backends_avg')} busy backends on average of "
        f"{s.database.get('connections_avg')} connected (pg_stat_activity every 0.2 s; a statement "
        f"of a transaction left idle is its last); "
        f"busy waiting on {s.database.get('waits_share')}"
        + "".join(f"\n                 {k:>5} x {q}"
                  for q, k in list(s.database.get("busy_statements_avg", {}).items())[:4]),
        "endpoints      type     name                                              count  fail "
        "  req/s   p50   p95   p99 (ms)",
    ]
    for r in s.endpoints:
        lines.append(f"               {r['type']:<8} {r['name'][:48]:<48} {r['count']:>7} "
                     f"{r['failures']:>5} {r['rps']:>6} {r['p50_ms']:>5g} {r['p95_ms']:>5g} "
                     f"{r['p99_ms']:>5g}")
    log = s.service_log or {}
    five = {route: {k: v for k, v in info["statuses"].items() if int(k) >= 500}
            for route, info in log.get("routes", {}).items()}
    five = {route: v for route, v in five.items() if v}
    lines.append("service log    " + (f"errors {log.get('errors')}" if log.get("errors")
                                      else "no errors logged")
                 + (f"; 5xx {five}" if five else "; no 5xx"))
    inv = s.invariants
    lines.append(f"invariants     {'ALL HOLD' if inv.get('ok') else 'FAILED'}")
    lines.extend(inv.get("lines", []))
    lines.append(f"reports        {s.reports.get('html')}, {s.reports.get('stats_csv')} "
                 f"(and summary.json beside them)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
