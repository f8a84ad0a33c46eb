"""Tamper evidence: a hash chain over committed batches, with signed checkpoints.

Every committed batch appends one link::

    link[n] = SHA-256(link[n-1] || canonical_batch_bytes)

where the canonical bytes are a fixed-layout header followed by each transfer of the batch in
batch order and each pending transfer the batch expired. Editing, adding or removing any
transfer row changes the bytes of its batch and so breaks that link. Every
``checkpoint_every`` links, the link is signed with an Ed25519 key held outside the
database, so that rewriting the chain from some point on is detected too.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger_core.model import StoredTransfer

GENESIS_LINK = bytes(32)
_MAGIC = b"GWLEDGER1"
_HEADER = struct.Struct(">9sqqii")
# id, debit, credit, amount, pending_id, user_data_128, user_data_64, user_data_32,
# timeout_seconds, ledger, code, flags, batch_index, created_at_us, expires_at_us
_TRANSFER = struct.Struct(">16s16s16sq16s16sqiiiiiiqq")
_PACK_TRANSFER = _TRANSFER.pack
_EXPIRY = struct.Struct(">c16s")
_CHECKPOINT = struct.Struct(">18sq32s")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_ID = bytes(16)


def microseconds(moment: datetime | None) -> int:
    """Microseconds since the Unix epoch; exact for PostgreSQL timestamptz values."""
    if moment is None:
        return 0
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def batch_bytes(
    batch_id: int,
    created_at: datetime,
    transfers: Iterable[StoredTransfer],
    expired_pending_ids: Iterable[uuid.UUID],
) -> bytes:
    """The canonical bytes of one batch. Transfers in batch order; expiries sorted by id."""
    # The batch's transfers share its creation time: its microseconds are counted once.
    batch_us = microseconds(created_at)
    body = [transfer_bytes(t, batch_us if t.created_at is created_at else None)
            for t in transfers]
    expiries = [_EXPIRY.pack(b"X", pending_id.bytes) for pending_id in sorted(expired_pending_ids)]
    header = _HEADER.pack(_MAGIC, batch_id, microseconds(created_at), len(body), len(expiries))
    return b"".join([header, *body, *expiries])


def transfer_bytes(t: StoredTransfer, created_us: int | None = None) -> bytes:
    """``created_us``: ``microseconds(t.created_at)`` when the caller has it already."""
    return _PACK_TRANSFER(
        t.id.bytes,
        t.debit_account_id.bytes,
        t.credit_account_id.bytes,
        t.amount,
        t.pending_id.bytes if t.pending_id is not None else _NO_ID,
        t.user_data_128.bytes,
        t.user_data_64,
        t.user_data_32,
        t.timeout_seconds,
        t.ledger,
        t.code,
        t.flags,
        t.batch_index,
        microseconds(t.created_at) if created_us is None else created_us,
        0 if t.expires_at is None else microseconds(t.expires_at),
    )


def next_link(previous: bytes, content: bytes) -> bytes:
    return hashlib.sha256(previous + content).digest()


def checkpoint_message(seq: int, link: bytes) -> bytes:
    return _CHECKPOINT.pack(b"GWLEDGER1-CHECKPT", seq, link)


def sign_checkpoint(key: Ed25519PrivateKey, seq: int, link: bytes) -> bytes:
    return key.sign(checkpoint_message(seq, link))


def checkpoint_is_valid(key: Ed25519PublicKey, seq: int, link: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, checkpoint_message(seq, link))
    except InvalidSignature:
        return False
    return True
