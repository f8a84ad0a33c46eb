"""Named SQL queries kept in ``.sql`` files.

A file holds blocks that each start with a ``-- name: <query_name>`` line, in the style of
aiosql. Hand-written (a dozen lines) because the hot path calls asyncpg directly with the
query text, so that asyncpg's prepared-statement cache applies, and aiosql's adapters add
a layer we would only bypass. ``tests/test_sql_queries.py`` prepares every named query of
every file against the migrated schema.
"""

from __future__ import annotations

import re
from pathlib import Path

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def load_queries(path: Path) -> dict[str, str]:
    """Return ``{name: sql}`` for every named block in the file at ``path``."""
    text = path.read_text(encoding="utf-8")
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = body.strip()
        assert name not in queries, f"query {name} is defined twice in {path}"
        assert sql, f"query {name} in {path} is empty"
        queries[name] = sql
    return queries


def query_files() -> list[Path]:
    """Every ``queries*.sql`` file of the project's packages (for the preparation test)."""
    root = Path(__file__).resolve().parent.parent
    files: list[Path] = []
    for package in ("ledger_core", "subsidy_rules", "wallet", "merchant_api", "gwallet"):
        files.extend(sorted((root / package).glob("queries*.sql")))
    return files
