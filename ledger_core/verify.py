"""Checks every ledger invariant and the hash chain; runnable at any time.

It reads one consistent snapshot (a read-only REPEATABLE READ transaction) and reports every
failure it finds, with the first broken link of the chain, instead of stopping at the first.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import asyncpg
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger_core.chain import GENESIS_LINK, batch_bytes, checkpoint_is_valid, next_link
from ledger_core.model import StoredTransfer
from ledger_core.sql import load_queries

Q = load_queries(Path(__file__).with_name("queries.sql"))
_REPORT_LIMIT = 100  # failures listed per check; the count says if there are more
_CHAIN_PAGE = 500


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    check: str  # ledger_balanced, account_totals, limit_flags, pending_resolutions, chain, checkpoint
    detail: str
    seq: int | None = None
    batch_id: int | None = None
    account_id: str | None = None
    ledger: int | None = None


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    accounts: int
    transfers: int
    links: int
    checkpoints: int
    first_broken_link: int | None
    failures: list[Failure]


async def verify_ledger(
    db: asyncpg.Pool | asyncpg.Connection, public_key: Ed25519PublicKey | None
) -> VerifyReport:
    """Run every check. ``public_key`` is the configured checkpoint key (never the one stored
    beside the checkpoints, which whoever rewrote the chain could have replaced too)."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _verify(conn, public_key)
    return await _verify(db, public_key)


async def _verify(conn: asyncpg.Connection, public_key: Ed25519PublicKey | None) -> VerifyReport:
    failures: list[Failure] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        counts = await conn.fetchrow(Q["verify_counts"])
        for row in await conn.fetch(Q["verify_ledgers_balanced"]):
            failures.append(Failure(
                check="ledger_balanced", ledger=row["ledger"],
                detail=f"debits minus credits: posted {row['posted_difference']}, "
                       f"pending {row['pending_difference']}",
            ))
        for row in await conn.fetch(Q["verify_account_totals"], _REPORT_LIMIT):
            failures.append(Failure(
                check="account_totals", account_id=str(row["id"]),
                detail="totals (debits pending/posted, credits pending/posted) "
                       f"{row['debits_pending']}/{row['debits_posted']}/"
                       f"{row['credits_pending']}/{row['credits_posted']} but its transfers "
                       f"sum to {row['expected_debits_pending']}/{row['expected_debits_posted']}/"
                       f"{row['expected_credits_pending']}/{row['expected_credits_posted']}",
            ))
        for row in await conn.fetch(Q["verify_limit_flags"], _REPORT_LIMIT):
            failures.append(Failure(check="limit_flags", account_id=str(row["id"]),
                                    detail="a limit flag is violated"))
        for row in await conn.fetch(Q["verify_transfer_accounts"], _REPORT_LIMIT):
            failures.append(Failure(check="transfer_accounts",
                                    detail=f"transfer {row['id']} names a missing account"))
        for row in await conn.fetch(Q["verify_resolutions"], _REPORT_LIMIT):
            failures.append(Failure(check="pending_resolutions",
                                    detail=f"{row['problem']}: {row['id']}"))
        links, chain_failures = await _verify_chain(conn)
        failures.extend(chain_failures)
        unchained = await conn.fetchval(Q["verify_unchained_transfers"])
        if unchained:
            failures.append(Failure(check="chain",
                                    detail=f"{unchained} transfers belong to no chained batch"))
        checkpoints, checkpoint_failures = await _verify_checkpoints(conn, public_key)
        failures.extend(checkpoint_failures)
    broken = [f.seq for f in failures if f.check in ("chain", "checkpoint") and f.seq is not None]
    return VerifyReport(
        ok=not failures,
        accounts=counts["accounts"],
        transfers=counts["transfers"],
        links=links,
        checkpoints=checkpoints,
        first_broken_link=min(broken) if broken else None,
        failures=failures,
    )


async def _verify_chain(conn: asyncpg.Connection) -> tuple[int, list[Failure]]:
    failures: list[Failure] = []
    previous_seq = 0
    previous_link = GENESIS_LINK
    while True:
        page = await conn.fetch(Q["verify_chain_page"], previous_seq, _CHAIN_PAGE)
        if not page:
            break
        batch_ids = [row["batch_id"] for row in page]
        transfers: dict[int, list[StoredTransfer]] = defaultdict(list)
        for row in await conn.fetch(Q["verify_batch_transfers"], batch_ids):
            transfers[row["batch_id"]].append(StoredTransfer(**row))
        expiries: dict[int, list] = defaultdict(list)
        for row in await conn.fetch(Q["verify_batch_expiries"], batch_ids):
            expiries[row["batch_id"]].append(row["pending_id"])
        for row in page:
            seq, batch_id = row["seq"], row["batch_id"]
            if seq != previous_seq + 1:
                failures.append(Failure(check="chain", seq=previous_seq + 1, batch_id=None,
                                        detail=f"links {previous_seq + 1}..{seq - 1} are missing"))
            if row["prev_link"] != previous_link:
                failures.append(Failure(check="chain", seq=seq, batch_id=batch_id,
                                        detail="does not follow the previous link"))
            batch_transfers = transfers.get(batch_id, [])
            batch_expiries = expiries.get(batch_id, [])
            content = batch_bytes(batch_id, row["created_at"], batch_transfers, batch_expiries)
            if next_link(row["prev_link"], content) != row["link"]:
                failures.append(Failure(
                    check="chain", seq=seq, batch_id=batch_id,
                    detail="the batch's transfers no longer hash to its link "
                           f"({len(batch_transfers)} transfers now, {row['transfer_count']} "
                           "when committed)",
                ))
            previous_seq, previous_link = seq, row["link"]
    head = await conn.fetchrow(Q["verify_chain_head"])
    if head["seq"] != previous_seq or head["link"] != previous_link:
        failures.append(Failure(check="chain", seq=previous_seq, batch_id=None,
                                detail="the chain head does not match the last link"))
    return previous_seq, failures


async def _verify_checkpoints(
    conn: asyncpg.Connection, public_key: Ed25519PublicKey | None
) -> tuple[int, list[Failure]]:
    failures: list[Failure] = []
    rows = await conn.fetch(Q["verify_checkpoints"])
    for row in rows:
        seq = row["seq"]
        if row["chain_link"] != row["link"]:
            failures.append(Failure(check="checkpoint", seq=seq,
                                    detail="the signed link differs from the chain's link"))
        if public_key is not None and not checkpoint_is_valid(
            public_key, seq, row["link"], row["signature"]
        ):
            failures.append(Failure(check="checkpoint", seq=seq,
                                    detail="the signature does not verify with the ledger key"))
    return len(rows), failures
