"""Citizens' identity: validation, personal data encrypted at rest, one account per person."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import asyncpg
import httpx
import pytest

from gwallet.ids import parse_id
from gwallet.migrate import migrate
from gwallet.pii import DecryptionError, KeyConfigError, Keyring, LookupIndex, PiiCipher, key_id_of
from gwallet.problems import DomainError
from tests.wallet_helpers import (
    key_list,
    national_id,
    problem,
    register,
    registration_body,
    with_wrong_check_digit,
)
from wallet import identity
from wallet.auth import PinHasher, check_pin_strength, weak_pins

NOW = datetime(2026, 11, 24, 5, 0, tzinfo=UTC)
THAI = str.maketrans("0123456789", "๐๑๒๓๔๕๖๗๘๙")
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


# --- validation, table-driven -----------------------------------------------------------------

VALID_ID = "1101700230708"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (with_wrong_check_digit(VALID_ID), "wrong check digit"),
        (VALID_ID.translate(THAI), "Thai digits (stdnum would accept them)"),
        (VALID_ID.translate(FULL_WIDTH), "full-width digits"),
        (VALID_ID[:-1], "12 digits"),
        (VALID_ID + "0", "14 digits"),
        ("1-1017-00230-70-8", "dashes"),
        (" " + VALID_ID, "a space"),
        (VALID_ID + "\x00", "a NUL byte"),
        ("", "empty"),
    ],
)
def test_a_national_id_is_13_ascii_digits_with_the_mod_11_check_digit(text: str, why: str) -> None:
    assert identity.parse_national_id(VALID_ID) == VALID_ID
    with pytest.raises(identity.InvalidNationalId):
        identity.parse_national_id(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0812345678", "+66812345678"), ("+66912345678", "+66912345678"), ("0612345678", "+66612345678")],
)
def test_thai_mobile_numbers_are_stored_in_e164_form(text: str, expected: str) -> None:
    assert identity.parse_thai_mobile(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "021234567",  # a Bangkok landline
        "0812345678".translate(THAI),
        "0812345678".translate(FULL_WIDTH),
        "081-234-5678",
        "+14155552671",  # not Thai
        "08123456789012345",
        "0812345678\x00",
        "",
    ],
)
def test_anything_but_a_thai_mobile_number_in_ascii_digits_is_refused(text: str) -> None:
    with pytest.raises(identity.InvalidPhone):
        identity.parse_thai_mobile(text)


BIRTH = date(1985, 4, 12)


@pytest.mark.parametrize(
    "pin",
    ["000000", "999999", "123456", "654321", "890123", "121212", "123123",
     "120485", "850412", "120428"],  # DDMMYY (CE), YYMMDD (CE), DDMMYY (Buddhist era 2528)
)
def test_trivially_weak_pins_and_the_birth_date_are_refused(pin: str) -> None:
    assert pin in weak_pins(BIRTH)
    with pytest.raises(DomainError) as refused:
        check_pin_strength(pin, BIRTH)
    assert refused.value.code == "weak_pin"


@pytest.mark.parametrize("pin", ["48291", "4829150", "482915".translate(THAI), "48 915", "48291a"])
def test_a_pin_is_exactly_six_ascii_digits(pin: str) -> None:
    with pytest.raises(DomainError) as refused:
        check_pin_strength(pin, BIRTH)
    assert refused.value.code == "invalid_pin"


def test_an_ordinary_pin_is_accepted() -> None:
    assert check_pin_strength("482915", BIRTH) == "482915"
    assert len(weak_pins(BIRTH)) < 1_500  # a thousandth of the PIN space at most


@pytest.mark.parametrize("name", ["", "   ", "a\x00b", "a\u200bb", "x" * 201, "line\nbreak"])
def test_a_full_name_without_control_or_invisible_characters_is_required(name: str) -> None:
    with pytest.raises(DomainError):
        identity.parse_full_name(name)
    assert identity.parse_full_name(" สมหญิง รักไทย ") == "สมหญิง รักไทย"


def test_a_district_belongs_to_its_province() -> None:
    body = {
        "national_id": VALID_ID, "phone": "0812345678", "full_name": "x", "birth_date": BIRTH,
        "province_code": "10", "district_code": "5001", "pin": "482915", "now": NOW,
    }
    with pytest.raises(DomainError) as refused:
        identity.validate_registration(**body)  # type: ignore[arg-type]
    assert refused.value.errors[0].field == "district_code"  # type: ignore[index]


# --- encryption ---------------------------------------------------------------------------


def cipher(*ids: str) -> PiiCipher:
    return PiiCipher(Keyring.parse(key_list(*ids), "test"))


def test_a_ciphertext_decrypts_only_in_its_own_row_and_field() -> None:
    pii = cipher("k1")
    row, other = uuid.uuid4(), uuid.uuid4()
    blob = pii.encrypt(VALID_ID, row_id=row, field="national_id")
    assert VALID_ID.encode() not in blob and key_id_of(blob) == "k1"
    assert pii.decrypt(blob, row_id=row, field="national_id") == VALID_ID
    with pytest.raises(DecryptionError):
        pii.decrypt(blob, row_id=other, field="national_id")  # swapped into another row
    with pytest.raises(DecryptionError):
        pii.decrypt(blob, row_id=row, field="phone")  # moved into another column
    with pytest.raises(DecryptionError):
        pii.decrypt(blob[:-1] + bytes([blob[-1] ^ 1]), row_id=row, field="national_id")
    assert pii.encrypt(VALID_ID, row_id=row, field="national_id") != blob  # fresh nonce


def test_after_rotation_the_newest_key_encrypts_and_every_listed_key_decrypts() -> None:
    old = Keyring.parse(key_list("k1"), "old")
    rotated = Keyring.parse(f"{key_list('k2')},k1:{old.keys['k1'].hex()}", "new")
    row = uuid.uuid4()
    before = PiiCipher(old).encrypt("สมชาย", row_id=row, field="full_name")
    after = PiiCipher(rotated)
    assert after.decrypt(before, row_id=row, field="full_name") == "สมชาย"
    assert after.needs_rekey(before)
    fresh = after.encrypt("สมชาย", row_id=row, field="full_name")
    assert key_id_of(fresh) == "k2" and not after.needs_rekey(fresh)
    with pytest.raises(DecryptionError):  # k1 removed: a row not rekeyed cannot be read
        cipher("k2").decrypt(before, row_id=row, field="full_name")


@pytest.mark.parametrize(
    "text", ["", "k1", "k1:abcd", "K1:" + "00" * 32, "k1:" + "zz" * 32, f"k1:{'00' * 32},k1:{'11' * 32}"]
)
def test_malformed_key_lists_are_refused(text: str) -> None:
    with pytest.raises(KeyConfigError):
        Keyring.parse(text, "GWALLET_PII_ENCRYPTION_KEYS")


def test_lookup_digests_are_keyed_and_tried_under_every_key() -> None:
    one = LookupIndex(Keyring.parse(key_list("l1"), "a"))
    two = LookupIndex(Keyring.parse(key_list("l2"), "b"))
    assert one.digest(VALID_ID, purpose="national_id") != two.digest(VALID_ID, purpose="national_id")
    assert one.digest(VALID_ID, purpose="national_id") != one.digest(VALID_ID, purpose="phone")
    assert one.digests(VALID_ID, purpose="national_id") == [one.digest(VALID_ID, purpose="national_id")]


# --- registration over HTTP ---------------------------------------------------------------


async def test_registration_answers_the_ids_and_the_authenticator_to_enrol(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    body = registration_body()
    response = await wallet_api.post("/v1/citizen/registrations", json=body)
    assert response.status_code == 201, response.text
    out = response.json()
    citizen_id, wallet_id = parse_id("cit", out["citizen_id"]), parse_id("wal", out["wallet_id"])
    assert citizen_id is not None and wallet_id is not None
    assert out["totp_provisioning_uri"].startswith("otpauth://totp/G-Wallet:cit_")
    assert "secret=" in out["totp_provisioning_uri"]
    assert out["totp_qr_svg"].lstrip().startswith("<svg")
    account = await pool.fetchrow("SELECT * FROM ledger_accounts WHERE id = $1", wallet_id)
    assert account["code"] == 200 and account["debits_must_not_exceed_credits"]
    assert account["user_data_128"] == citizen_id


async def test_a_second_registration_of_a_national_id_is_409_already_registered(
    wallet_api: httpx.AsyncClient,
) -> None:
    citizen = await register(wallet_api)
    again = await wallet_api.post(
        "/v1/citizen/registrations",
        json=registration_body(national_id=citizen.national_id, phone="0898765432"),
    )
    assert again.status_code == 409 and problem(again)["code"] == "already_registered"


async def test_concurrent_duplicate_registrations_make_exactly_one_account(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    body = registration_body()
    responses = await asyncio.gather(
        *(wallet_api.post("/v1/citizen/registrations", json=body) for _ in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    assert all(problem(r)["code"] == "already_registered" for r in responses if r.status_code == 409)
    created = next(r for r in responses if r.status_code == 201).json()
    wallet_id = parse_id("wal", created["wallet_id"])
    count = await pool.fetchval(
        "SELECT count(*) FROM ledger_accounts a WHERE a.code = 200 AND a.user_data_128 = $1",
        parse_id("cit", created["citizen_id"]),
    )
    assert count == 1 and wallet_id is not None  # the losers' wallet accounts rolled back


async def test_a_dump_of_the_citizens_table_shows_no_national_id_phone_or_name_in_clear(
    wallet_api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    body = registration_body(full_name="ประยุทธ์ทดสอบ ไม่ควรเห็น", phone="0823456789")
    response = await wallet_api.post("/v1/citizen/registrations", json=body)
    assert response.status_code == 201
    dump = io.BytesIO()
    async with pool.acquire() as conn:
        for table in ("citizens", "citizen_sessions", "topups", "idempotency_keys"):
            await conn.copy_from_table(table, output=dump)
    text = dump.getvalue()
    for secret in (str(body["national_id"]), "823456789", str(body["full_name"])):
        raw = secret.encode()
        assert raw not in text, secret
        assert raw.hex().encode() not in text, secret  # nor as a bytea's hex
    assert str(body["pin"]).encode().hex().encode() not in text


@pytest.fixture
async def own_pool(admin_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own: rekeying rewrites every citizen row."""
    name = f"gwallet_rekey_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(admin_database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_database_url.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate(url)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        yield pool
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_rotated_keys_rekey_every_row_and_lookups_still_find_the_citizen(
    own_pool: asyncpg.Pool,
) -> None:
    pool = own_pool
    old = identity.IdentityKeys(
        pii=PiiCipher(Keyring.parse(key_list("a1"), "pii")),
        lookup=LookupIndex(Keyring.parse(key_list("b1"), "lookup")),
        pins=PinHasher(Keyring.parse(key_list("c1"), "pins")),
    )
    citizen = identity.validate_registration(
        national_id=national_id(), phone="0812345678", full_name="หมุนกุญแจ", birth_date=BIRTH,
        province_code="50", district_code="5001", pin="482915", now=NOW,
    )
    registered = await identity.register(pool, old, citizen)
    rotated = identity.IdentityKeys(
        pii=PiiCipher(Keyring.parse(
            f"{key_list('a2')},a1:{old.pii.keyring.keys['a1'].hex()}", "pii")),
        lookup=LookupIndex(Keyring.parse(
            f"{key_list('b2')},b1:{old.lookup.keyring.keys['b1'].hex()}", "lookup")),
        pins=old.pins,
    )
    assert await identity.rekey_citizens(pool, rotated) >= 1
    assert await identity.rekey_citizens(pool, rotated) == 0  # nothing left to do
    new_only = identity.IdentityKeys(
        pii=PiiCipher(Keyring(keys={"a2": rotated.pii.keyring.keys["a2"]}, current="a2")),
        lookup=LookupIndex(Keyring(keys={"b2": rotated.lookup.keyring.keys["b2"]}, current="b2")),
        pins=old.pins,
    )
    found = await identity.load_identity(pool, new_only.pii, registered.citizen_id)
    assert found is not None and found.national_id == citizen.national_id
    assert found.full_name == "หมุนกุญแจ" and found.phone == "+66812345678"
    with pytest.raises(identity.AlreadyRegistered):  # the new lookup key finds the row
        await identity.register(pool, new_only, citizen)
