"""Personal data at rest: AES-GCM encryption, HMAC lookup indexes, and their rotating keys.

Generic enough for every feature that stores personal data (citizens' national IDs, phones
and names; merchants' bank accounts later). Three rules:

- **Ciphertexts are bound to their row and column.** The associated data of AES-256-GCM is
  the row id and the field name, so a ciphertext copied into another row or column fails to
  decrypt instead of showing someone else's data.
- **Each ciphertext names its key.** ``encrypt`` writes ``version, key id, nonce,
  ciphertext+tag`` into one ``bytea``; ``decrypt`` picks the key by that id. Rotation: put a
  new key first in the list; it encrypts from then on, every listed key still decrypts, and a
  re-encryption job (``needs_rekey``) moves old rows to the new key before the old one is
  dropped.
- **Lookups never decrypt.** An equality lookup (one account per national ID) goes through
  ``HMAC-SHA256(lookup key, purpose, value)``, with a key separate from the encryption keys.
  Readers try the digests under every listed lookup key; writers store the first one.

Keys come from settings as ``"id:hex,id:hex"`` (32-byte keys; the first is the current one).
Without a setting, a development key is made once in ``data_dir`` (mode 0600) and each use
is logged as a warning, as ``gwallet.keys`` does for the ledger's signing key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_log = logging.getLogger("gwallet.pii")

KEY_BYTES = 32
NONCE_BYTES = 12
_FORMAT_VERSION = 1
_KEY_ID = re.compile(r"^[a-z0-9_-]{1,32}$")
_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
_KEY_LIST_MAX = 16


class KeyConfigError(ValueError):
    """A key list setting is malformed (ids, hex, length, duplicates)."""


class DecryptionError(ValueError):
    """A ciphertext is malformed, names an unknown key, or was not made for this row/field."""


@dataclass(frozen=True, slots=True)
class Keyring:
    """Named 32-byte keys; ``current`` (the first listed) is the one that writes."""

    keys: dict[str, bytes]
    current: str

    @classmethod
    def parse(cls, text: str, source: str) -> Keyring:
        """Parse ``"id:hex,id:hex"``; the first key is the current one."""
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key_id, sep, value = part.partition(":")
            key_id, value = key_id.strip(), value.strip().lower()
            if not sep or not _KEY_ID.fullmatch(key_id):
                raise KeyConfigError(f"{source}: each key is `id:hex` with id of [a-z0-9_-]{{1,32}}")
            if not _HEX_KEY.fullmatch(value):
                raise KeyConfigError(f"{source}: key {key_id!r} must be 32 bytes as 64 hex digits")
            if key_id in keys:
                raise KeyConfigError(f"{source}: key id {key_id!r} is listed twice")
            keys[key_id] = bytes.fromhex(value)
            order.append(key_id)
        if not order:
            raise KeyConfigError(f"{source}: no key given")
        if len(order) > _KEY_LIST_MAX:
            raise KeyConfigError(f"{source}: at most {_KEY_LIST_MAX} keys")
        return cls(keys=keys, current=order[0])

    @property
    def current_key(self) -> bytes:
        return self.keys[self.current]

    def ordered(self) -> list[tuple[str, bytes]]:
        """(id, key) pairs, the current key first."""
        return [(self.current, self.current_key)] + [
            (k, v) for k, v in self.keys.items() if k != self.current
        ]


def new_key_list_entry(key_id: str = "dev1") -> str:
    return f"{key_id}:{secrets.token_hex(KEY_BYTES)}"


def load_keyring(configured: str | None, data_path: Path, file_name: str, setting: str) -> Keyring:
    """The keyring from its setting, or the development keyring kept in ``data_path``."""
    if configured is not None:
        return Keyring.parse(configured, setting)
    path = data_path / file_name
    text = dev_secret(path, new_key_list_entry)
    _log.warning(
        "development-only keys %s from %s; set %s in production", setting, path, setting
    )
    return Keyring.parse(text, str(path))


def dev_secret(path: Path, make: Callable[[], str]) -> str:
    """The text kept at ``path``, made by ``make()`` the first time (mode 0600).

    Written to a private temporary file and hard-linked into place: the link fails if another
    process got there first, and nobody ever reads a half-written secret.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(make() + "\n")
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(temporary)
    return path.read_text(encoding="ascii").strip()


# --- encryption ---------------------------------------------------------------------------


def _associated_data(row_id: uuid.UUID, field: str) -> bytes:
    assert field and "\x1f" not in field
    return b"gwallet-pii\x1f" + row_id.bytes + b"\x1f" + field.encode()


@dataclass(frozen=True, slots=True)
class PiiCipher:
    keyring: Keyring

    def encrypt(self, plaintext: str, *, row_id: uuid.UUID, field: str) -> bytes:
        """``version | len(key id) | key id | nonce | AES-GCM(plaintext, aad=row id + field)``."""
        key_id = self.keyring.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keyring.current_key).encrypt(
            nonce, plaintext.encode("utf-8"), _associated_data(row_id, field)
        )
        kid = key_id.encode("ascii")
        return bytes((_FORMAT_VERSION, len(kid))) + kid + nonce + sealed

    def decrypt(self, blob: bytes, *, row_id: uuid.UUID, field: str) -> str:
        key_id, nonce, sealed = _split(blob)
        key = self.keyring.keys.get(key_id)
        if key is None:
            raise DecryptionError(f"ciphertext names key {key_id!r}, which is not configured")
        try:
            plain = AESGCM(key).decrypt(nonce, sealed, _associated_data(row_id, field))
        except InvalidTag:
            raise DecryptionError("ciphertext does not belong to this row and field") from None
        return plain.decode("utf-8")

    def needs_rekey(self, blob: bytes) -> bool:
        """True when ``blob`` was encrypted with a key other than the current one."""
        return key_id_of(blob) != self.keyring.current


def key_id_of(blob: bytes) -> str:
    return _split(blob)[0]


def _split(blob: bytes) -> tuple[str, bytes, bytes]:
    blob = bytes(blob)
    if len(blob) < 2 or blob[0] != _FORMAT_VERSION:
        raise DecryptionError("unknown ciphertext format")
    end = 2 + blob[1]
    if len(blob) < end + NONCE_BYTES + 16:
        raise DecryptionError("truncated ciphertext")
    try:
        key_id = blob[2:end].decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionError("malformed key id") from None
    return key_id, blob[end : end + NONCE_BYTES], blob[end + NONCE_BYTES :]


# --- lookup index -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LookupIndex:
    """Keyed digests for equality lookups: ``HMAC-SHA256(key, purpose \\x1f value)``."""

    keyring: Keyring

    def digest(self, value: str, *, purpose: str) -> bytes:
        """The digest to store (current key)."""
        return _mac(self.keyring.current_key, purpose, value)

    def digests(self, value: str, *, purpose: str) -> list[bytes]:
        """The digest under every configured key, the current one first (for lookups)."""
        return [_mac(key, purpose, value) for _, key in self.keyring.ordered()]


def _mac(key: bytes, purpose: str, value: str) -> bytes:
    assert purpose and "\x1f" not in purpose
    return hmac.new(key, purpose.encode() + b"\x1f" + value.encode("utf-8"), hashlib.sha256).digest()
