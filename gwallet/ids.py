"""Public ids: a type prefix and 26 characters of Crockford base32 over a UUID.

``cit_``, ``mer_``, ``prg_``, ``preq_``, ``pay_``, ``ref_``, ``top_``, ``stl_``, ``off_``,
``evt_`` (shared/API.md). The UUID behind an id is what the database stores. New ids are
version 7 (``ledger_core.new_id``): 48 bits of creation time in milliseconds, then 74 random
bits, so they sort by creation (B-tree locality) but are never sequential and never
guessable; what they reveal is the millisecond they were made. Ids derived from an
Idempotency-Key are version 5 (random-looking). ``parse_id`` turns any malformed or
wrongly-prefixed string into None, which handlers answer with 404 (never 500).
"""

from __future__ import annotations

import uuid

from ledger_core import new_id

PREFIXES = frozenset({"cit", "mer", "prg", "preq", "pay", "ref", "top", "stl", "off", "evt",
                      "wal", "ses", "key", "enr", "ver", "run",
                      "fnd", "aud",  # funding requests, audit entries (issue 3)
                      "txn"})  # wallet movements: ledger transfers of a wallet (issue 4)
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_LENGTH = 26  # ceil(128 / 5)


def format_id(prefix: str, value: uuid.UUID) -> str:
    assert prefix in PREFIXES, f"unknown id prefix {prefix!r}"
    number = value.int
    chars = []
    for _ in range(_LENGTH):
        chars.append(_ALPHABET[number & 31])
        number >>= 5
    return prefix + "_" + "".join(reversed(chars))


def parse_id(prefix: str, text: str) -> uuid.UUID | None:
    """The UUID of ``prefix_xxx``, or None when ``text`` is not such an id."""
    if not isinstance(text, str) or len(text) != len(prefix) + 1 + _LENGTH:
        return None
    if not text.startswith(prefix + "_"):
        return None
    number = 0
    for char in text[len(prefix) + 1:]:
        digit = _DECODE.get(char)
        if digit is None:
            return None
        number = (number << 5) | digit
    if number >> 128:
        return None
    return uuid.UUID(int=number)


def new_public_id(prefix: str) -> tuple[str, uuid.UUID]:
    """A fresh random id: ``(public text, UUID to store)``."""
    value = new_id()
    return format_id(prefix, value), value
