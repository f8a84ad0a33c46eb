"""The Ed25519 key that signs the ledger's hash-chain checkpoints.

Production passes it in ``GWALLET_LEDGER_SIGNING_KEY_HEX`` (32 raw bytes, hex). Without it a
key is made once and kept in the data directory (mode 0600) so that restarts and every worker
process sign with the same key; that is for development only, and each use says so in the log.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gwallet.settings import Settings

KEY_FILE_NAME = "ledger-signing-key.hex"
_KEY_BYTES = 32

_log = logging.getLogger("gwallet.keys")


class SigningKeyError(ValueError):
    """The configured signing key is not 32 bytes of hex."""


def load_signing_key(settings: Settings) -> Ed25519PrivateKey:
    if settings.ledger_signing_key_hex is not None:
        return _from_hex(settings.ledger_signing_key_hex, "GWALLET_LEDGER_SIGNING_KEY_HEX")
    path = settings.data_path / KEY_FILE_NAME
    created = _create_if_missing(path)
    _log.warning(
        "development-only ledger signing key %s %s; set GWALLET_LEDGER_SIGNING_KEY_HEX in "
        "production",
        "created at" if created else "loaded from",
        path,
    )
    return _from_hex(path.read_text(encoding="ascii").strip(), str(path))


def private_key_hex(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


def _from_hex(text: str, source: str) -> Ed25519PrivateKey:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise SigningKeyError(f"{source} is not hex") from None
    if len(raw) != _KEY_BYTES:
        raise SigningKeyError(f"{source} must be {_KEY_BYTES} bytes ({_KEY_BYTES * 2} hex digits)")
    return Ed25519PrivateKey.from_private_bytes(raw)


def _create_if_missing(path: Path) -> bool:
    """Write a new key to ``path`` unless one is there; True if this call wrote it.

    Written to a private temporary file first and then hard-linked into place: the link fails
    if another process got there first, and nobody ever reads a half-written key.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".signing-key-")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(private_key_hex(Ed25519PrivateKey.generate()) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temporary)
