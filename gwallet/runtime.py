"""Process-level tuning of the Python runtime for the service and its benchmarks.

The garbage collector's cycle detection is a large share of the payment path's CPU when left
at CPython's defaults: a generation-0 collection runs every 700 net container allocations,
and a ledger batch of 1,000 payments allocates hundreds of thousands (records, tuples,
futures, coroutine frames). Measured on the ledger benchmark (BENCHMARKS.md): ~88 -> ~68 us
of Python CPU per payment, +19 % payments/s. Reference counting still frees almost every
object at once; only cyclic garbage waits longer.
"""

from __future__ import annotations

import gc


def tune_gc(gen0_threshold: int) -> None:
    """Freeze what exists now (the imported code and the app built at startup: never
    garbage, no longer scanned) and collect generation 0 every ``gen0_threshold`` net
    allocations. 0 leaves CPython's defaults."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
