"""The ledger benchmark end to end, tiny and bounded (~20 s): every phase runs, the ledger it
leaves verifies, and the figures it reports are there and consistent.

It runs as a subprocess, as a person runs it (``python -m loadtests.ledger_bench``), in
databases of its own (``--database-prefix``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_SECONDS = 240  # the run takes ~20 s; this only stops a hung one


async def _drop(admin_url: str, names: list[str]) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def test_the_ledger_benchmark_runs_every_phase_and_leaves_a_verified_ledger(
    admin_database_url: str, tmp_path: Path
) -> None:
    prefix = f"gwallet_benchtest_{secrets.token_hex(3)}"
    out = tmp_path / "nested" / "ledger_bench.json"  # its folder does not exist yet
    command = [
        sys.executable, "-m", "loadtests.ledger_bench", "--dsn", admin_database_url,
        "--database-prefix", prefix, "--citizens", "300", "--seconds", "1",
        "--in-flight", "200", "--processes", "2", "--json", str(out),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GWALLET_")}
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
    finally:
        asyncio.run(_drop(admin_database_url, [f"{prefix}_pgbench", f"{prefix}_ledger"]))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["verify_ok"] is True and report["verify_failures"] == []
    assert report["durability"] == {"synchronous_commit": "on", "fsync": "on"}
    assert report["r_tpcb_tps"] > 0
    for phase in ("naive", "engine", "engine_processes"):
        assert report[phase]["payments"] > 0, phase
        assert report[phase]["failed"] == 0, phase
        assert report[phase]["p50_ms"] <= report[phase]["p95_ms"] <= report[phase]["p99_ms"]
    processes = report["engine_processes"]
    assert processes["name"] == "engine, 2 processes"
    assert processes["python_cpu_us_per_payment"] > 0
    assert processes["other_cpu_us_per_payment"] is not None  # Linux: /proc/stat
    assert report["engine_processes_over_r_tpcb"] == round(
        processes["per_second"] / report["r_tpcb_tps"], 2)
    assert "ledger verify ok" in result.stdout
