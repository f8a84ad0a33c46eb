"""Public ids and TOTP checking rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from gwallet.ids import PREFIXES, format_id, new_public_id, parse_id
from gwallet.totp import code_at_step, matching_step, new_secret, provisioning_uri, qr_svg, step_at


@given(st.uuids(), st.sampled_from(sorted(PREFIXES)))
def test_a_public_id_round_trips_to_its_uuid(value: uuid.UUID, prefix: str) -> None:
    assert parse_id(prefix, format_id(prefix, value)) == value


def test_public_ids_are_random_and_typed() -> None:
    text, value = new_public_id("pay")
    assert text.startswith("pay_") and len(text) == 30
    assert parse_id("pay", text) == value
    assert parse_id("ref", text) is None  # another type's prefix
    assert new_public_id("pay")[0] != text


def test_malformed_public_ids_parse_to_none() -> None:
    text = format_id("cit", uuid.UUID(int=2**128 - 1))
    for bad in ["", "cit_", text[:-1], text + "0", text.upper(), text.replace("_", "-"),
                "cit_" + "u" * 26, "cit_" + "z" * 26, text[:-1] + "\x00", 12345, None]:
        assert parse_id("cit", bad) is None, bad  # type: ignore[arg-type]


NOW = datetime(2026, 11, 24, 5, 0, 7, tzinfo=UTC)


def test_a_code_matches_its_step_and_one_step_either_side_only() -> None:
    secret = new_secret()
    step = step_at(NOW)
    for offset in (-1, 0, 1):
        assert matching_step(secret, code_at_step(secret, step + offset), NOW) == step + offset
    for offset in (-3, -2, 2, 3):
        code = code_at_step(secret, step + offset)
        if code not in {code_at_step(secret, step + k) for k in (-1, 0, 1)}:
            assert matching_step(secret, code, NOW) is None


def test_codes_with_thai_or_full_width_digits_or_other_shapes_are_refused() -> None:
    secret = new_secret()
    code = code_at_step(secret, step_at(NOW))
    thai = code.translate(str.maketrans("0123456789", "๐๑๒๓๔๕๖๗๘๙"))
    full_width = code.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    for bad in [thai, full_width, code + "0", code[:-1], " " + code[1:], int(code), None, ""]:
        assert matching_step(secret, bad, NOW) is None


def test_the_provisioning_uri_and_qr_code_carry_the_secret() -> None:
    secret = new_secret()
    uri = provisioning_uri(secret, "cit_x")
    assert uri.startswith("otpauth://totp/") and f"secret={secret}" in uri
    svg = qr_svg(uri)
    assert svg.startswith("<svg") and "</svg>" in svg
    assert matching_step(secret, code_at_step(secret, step_at(NOW + timedelta(seconds=30))),
                         NOW) == step_at(NOW) + 1
