"""The ledger signing key: from the environment in production, else a kept development key."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from gwallet.keys import KEY_FILE_NAME, SigningKeyError, load_signing_key, private_key_hex
from gwallet.settings import Settings


def test_a_configured_key_is_used_as_given(tmp_path: Path) -> None:
    hex_key = bytes(range(32)).hex()
    key = load_signing_key(Settings(data_dir=str(tmp_path), ledger_signing_key_hex=hex_key))
    assert private_key_hex(key) == hex_key
    assert not (tmp_path / KEY_FILE_NAME).exists()


@pytest.mark.parametrize(
    "bad", ["zz" * 32, "00" * 31, "00" * 33, ""], ids=["not hex", "31", "33", "empty"]
)
def test_a_configured_key_that_is_not_32_bytes_of_hex_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SigningKeyError):
        load_signing_key(Settings(data_dir=str(tmp_path), ledger_signing_key_hex=bad))


def test_without_a_key_one_is_made_once_private_to_its_owner_and_reused_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gwallet.keys")
    settings = Settings(data_dir=str(tmp_path / "data"))
    first = load_signing_key(settings)
    path = tmp_path / "data" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert private_key_hex(load_signing_key(settings)) == private_key_hex(first)
    messages = [r.getMessage() for r in caplog.records if r.name == "gwallet.keys"]
    assert len(messages) == 2 and all("development-only" in m for m in messages)
    assert "created at" in messages[0] and "loaded from" in messages[1]
    assert private_key_hex(first) not in caplog.text
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE_NAME]  # no temporary left
