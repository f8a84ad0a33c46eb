"""The audit log: every official action, who, when, what, before and after; hash-chained.

Each entry is appended *in the transaction of the action it records* (``append``), so an
entry exists exactly when its action does; refusals that must leave a trace (a failed login)
commit their entry on their own. Entries form a chain like the ledger's:

    hash = SHA-256(prev_hash || canonical entry bytes)

where the canonical bytes are the entry's fields (seq, id, time, actor, action, target,
before, after) as JSON with sorted keys (``canonical_bytes``). ``append`` takes the row lock
of ``audit_chain_head`` first, so concurrent appends are serialized and ``seq`` is dense; the
head is the last row any transaction of the back office locks (see migration 0004).

Triggers refuse UPDATE, DELETE and TRUNCATE of ``audit_log``. Someone who bypasses them (a
superuser with ``session_replication_role = replica``) is caught by ``verify_audit_log``,
which recomputes every hash and reports the first broken entry.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from gwallet.ids import format_id
from ledger_core import new_id
from ledger_core.sql import load_queries

Q = load_queries(Path(__file__).with_name("queries_officials.sql"))

GENESIS_HASH = bytes(32)
VERIFY_PAGE_ROWS = 1_000
CLI_ACTOR = "cli"  # the command line (the first admin is created there)
UNKNOWN_ACTOR = "unknown"  # a failed login: whoever tried is not known


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One entry as the API shows it (hashes in hex)."""

    id: str  # aud_...
    seq: int
    occurred_at: datetime
    actor: str  # the official's username, "cli" or "unknown"
    actor_id: str | None  # off_...
    action: str  # "program.approve", "funding.request", "official.login_failed", ...
    target_type: str
    target_id: str | None
    before: Any
    after: Any
    prev_hash: str
    hash: str


class AuditVerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    entries: int  # entries checked
    first_broken_seq: int | None  # the first entry whose chain does not recompute
    detail: str | None


def canonical_bytes(
    *,
    seq: int,
    entry_id: uuid.UUID,
    occurred_at: datetime,
    actor_id: uuid.UUID | None,
    actor: str,
    action: str,
    target_type: str,
    target_id: str | None,
    before: Any,
    after: Any,
) -> bytes:
    """The entry's content, as hashed. Keys sorted at every level; times in UTC to the
    microsecond (what PostgreSQL keeps), so the bytes recompute from the stored row."""
    return msgspec.json.encode(
        {
            "seq": seq,
            "id": str(entry_id),
            "occurred_at": occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor_id": None if actor_id is None else str(actor_id),
            "actor": actor,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "before": before,
            "after": after,
        },
        order="sorted",
    )


def chain_hash(prev_hash: bytes, content: bytes) -> bytes:
    return hashlib.sha256(prev_hash + content).digest()


async def append(
    conn: asyncpg.Connection,
    *,
    actor_id: uuid.UUID | None,
    actor: str,
    action: str,
    target_type: str,
    target_id: str | None = None,
    before: Any = None,
    after: Any = None,
) -> int:
    """Append one entry in the caller's transaction; return its seq.

    ``before`` and ``after`` are JSON-shaped values (dicts of str, int, bool, None, lists).
    """
    assert conn.is_in_transaction(), "an audit entry belongs to the action's transaction"
    # JSON round trip now, so the hash is computed over exactly what jsonb will give back.
    before = _json_value(before)
    after = _json_value(after)
    head = await conn.fetchrow(Q["lock_audit_head"])
    seq = head["seq"] + 1
    prev_hash = bytes(head["hash"])
    entry_id = new_id()
    # Taken under the head's lock, so times never go backwards along the chain.
    occurred_at = datetime.now(UTC)
    content = canonical_bytes(
        seq=seq,
        entry_id=entry_id,
        occurred_at=occurred_at,
        actor_id=actor_id,
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=target_id,
        before=before,
        after=after,
    )
    entry_hash = chain_hash(prev_hash, content)
    await conn.execute(
        Q["insert_audit_entry"],
        seq,
        entry_id,
        occurred_at,
        actor_id,
        actor,
        action,
        target_type,
        target_id,
        _jsonb(before),
        _jsonb(after),
        prev_hash,
        entry_hash,
    )
    await conn.execute(Q["advance_audit_head"], seq, entry_hash)
    return seq


def _json_value(value: Any) -> Any:
    return None if value is None else msgspec.json.decode(msgspec.json.encode(value))


def _jsonb(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def _from_row(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "entry_id": row["id"],
        "occurred_at": row["occurred_at"],
        "actor_id": row["actor_id"],
        "actor": row["actor"],
        "action": row["action"],
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "before": None if row["before"] is None else msgspec.json.decode(row["before"]),
        "after": None if row["after"] is None else msgspec.json.decode(row["after"]),
    }


def entry_out(row: asyncpg.Record) -> AuditEntry:
    fields = _from_row(row)
    return AuditEntry(
        id=format_id("aud", row["id"]),
        seq=row["seq"],
        occurred_at=row["occurred_at"],
        actor=row["actor"],
        actor_id=None if row["actor_id"] is None else format_id("off", row["actor_id"]),
        action=row["action"],
        target_type=row["target_type"],
        target_id=row["target_id"],
        before=fields["before"],
        after=fields["after"],
        prev_hash=bytes(row["prev_hash"]).hex(),
        hash=bytes(row["hash"]).hex(),
    )


async def list_entries(
    db: asyncpg.Pool | asyncpg.Connection,
    *,
    after_seq: int,
    limit: int,
    target_id: str | None = None,
    action: str | None = None,
) -> list[AuditEntry]:
    """Entries with seq > ``after_seq`` in chain order (at most ``limit``), optionally only
    those of one target or one action."""
    rows = await db.fetch(Q["list_audit_entries"], after_seq, limit, target_id, action)
    return [entry_out(row) for row in rows]


async def seq_of(db: asyncpg.Pool | asyncpg.Connection, entry_id: uuid.UUID) -> int | None:
    return await db.fetchval(Q["audit_seq_of"], entry_id)


async def verify_audit_log(db: asyncpg.Pool | asyncpg.Connection) -> AuditVerifyReport:
    """Recompute the whole chain in one snapshot; report the first entry that does not fit."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _verify(conn)
    return await _verify(db)


async def _verify(conn: asyncpg.Connection) -> AuditVerifyReport:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
        while True:
            rows = await conn.fetch(Q["audit_page"], expected_seq - 1, VERIFY_PAGE_ROWS)
            for row in rows:
                broken = _check_row(row, expected_seq, prev_hash)
                if broken is not None:
                    return AuditVerifyReport(
                        ok=False, entries=checked, first_broken_seq=expected_seq, detail=broken
                    )
                checked += 1
                expected_seq += 1
                prev_hash = bytes(row["hash"])
            if len(rows) < VERIFY_PAGE_ROWS:
                break
        head = await conn.fetchrow(Q["read_audit_head"])
    if head["seq"] != expected_seq - 1 or bytes(head["hash"]) != prev_hash:
        return AuditVerifyReport(
            ok=False,
            entries=checked,
            first_broken_seq=min(head["seq"], expected_seq),
            detail=f"the chain head (seq {head['seq']}) does not match the last entry "
            f"(seq {expected_seq - 1}): entries were removed or the head was changed",
        )
    return AuditVerifyReport(ok=True, entries=checked, first_broken_seq=None, detail=None)


def _check_row(row: asyncpg.Record, expected_seq: int, prev_hash: bytes) -> str | None:
    if row["seq"] != expected_seq:
        return f"entry {expected_seq} is missing (the next entry is {row['seq']})"
    if bytes(row["prev_hash"]) != prev_hash:
        return f"entry {expected_seq} does not link to the hash of entry {expected_seq - 1}"
    try:
        content = canonical_bytes(**_from_row(row))
    except msgspec.DecodeError:
        return f"entry {expected_seq} holds JSON that does not decode"
    if chain_hash(prev_hash, content) != bytes(row["hash"]):
        return f"entry {expected_seq} was changed: its content does not hash to its stored hash"
    return None
