"""A second service process for the multi-process ledger tests.

Runs its own LedgerEngine against the given database and, at the given start time, submits
``count`` concurrent transfers of ``amount`` from ``debit`` to ``credit`` (each with a fresh
id, or all with the one id given by ``--same-id``). Prints a JSON object of result counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from ledger_core import EngineConfig, LedgerEngine, Transfer  # noqa: E402
from tests.ledger_helpers import SIGNING_KEY, THB  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("debit", type=uuid.UUID)
    parser.add_argument("credit", type=uuid.UUID)
    parser.add_argument("count", type=int)
    parser.add_argument("amount", type=int)
    parser.add_argument("start_at", type=float)
    parser.add_argument("--same-id", type=uuid.UUID)
    args = parser.parse_args()
    pool = await asyncpg.create_pool(args.dsn, min_size=2, max_size=4)
    engine = LedgerEngine(pool, EngineConfig(batch_window_ms=1.0, batch_max_transfers=500),
                          SIGNING_KEY)
    await engine.start()
    transfers = [
        Transfer(id=args.same_id or uuid.uuid4(), debit_account_id=args.debit,
                 credit_account_id=args.credit, amount=args.amount, ledger=THB, code=1)
        for _ in range(args.count)
    ]
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    results = await asyncio.gather(*(engine.create_transfers([t]) for t in transfers))
    await engine.stop()
    await pool.close()
    print(json.dumps(Counter(r[0].name for r in results)))


if __name__ == "__main__":
    asyncio.run(main())
