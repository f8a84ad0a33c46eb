"""The Thai QR codec: published PromptPay vectors, one row per refusal, and properties."""

from __future__ import annotations

import binascii

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merchant_api.qr import (
    AdditionalData,
    BillPayment,
    CreditTransfer,
    PointOfInitiation,
    ProxyKind,
    QRBadAmount,
    QRBadCharacter,
    QRBadCRC,
    QRBadCurrency,
    QRBadField,
    QRBadHeader,
    QRBadPointOfInitiation,
    QRCRCNotLast,
    QRDuplicateTag,
    QRError,
    QRLengthOverflow,
    QRMissingField,
    QRPayloadTooLong,
    ThaiQR,
    decode,
    encode,
    payment_request_qr,
)

STATIC, DYNAMIC = PointOfInitiation.STATIC, PointOfInitiation.DYNAMIC


def tlv(tag: str, value: str) -> str:
    return f"{tag}{len(value):02d}{value}"


def with_crc(body: str) -> str:
    """``body`` + "6304" + its CRC, computed here independently of the codec."""
    body += "6304"
    return body + f"{binascii.crc_hqx(body.encode('ascii'), 0xFFFF):04X}"


def data_objects(payload: str) -> list[tuple[str, str]]:
    """The top-level (id, value) pairs of a well-formed payload, in order."""
    objects, position = [], 0
    while position < len(payload):
        size = int(payload[position + 2 : position + 4])
        objects.append(
            (payload[position : position + 2], payload[position + 4 : position + 4 + size])
        )
        position += 4 + size
    return objects


def mobile(proxy_id: str) -> CreditTransfer:
    return CreditTransfer(proxy_kind=ProxyKind.MOBILE, proxy_id=proxy_id)


def national_id(proxy_id: str) -> CreditTransfer:
    return CreditTransfer(proxy_kind=ProxyKind.NATIONAL_ID, proxy_id=proxy_id)


def ewallet(proxy_id: str) -> CreditTransfer:
    return CreditTransfer(proxy_kind=ProxyKind.EWALLET_ID, proxy_id=proxy_id)


# --- published vectors ----------------------------------------------------------------------
# (payload, expected value, canonical): canonical when the library writes the data objects in
# ascending id order with two decimals, as encode does; the others (58 before 53, or 54 after
# 58) must re-encode to the same data objects in that order.

PUBLIC_VECTORS = [
    # dtinth/promptpay-qr, index.test.js, "Local phone number"
    pytest.param(
        "00020101021129370016A000000677010111011300668012345675802TH530376463046197",
        ThaiQR(point_of_initiation=STATIC, merchant_account=mobile("0066801234567")),
        False,
        id="promptpay-qr: Local phone number",
    ),
    # dtinth/promptpay-qr, index.test.js, "National ID number"
    pytest.param(
        "00020101021129370016A000000677010111021311111111111115802TH530376463047B5A",
        ThaiQR(point_of_initiation=STATIC, merchant_account=national_id("1111111111111")),
        False,
        id="promptpay-qr: National ID number",
    ),
    # dtinth/promptpay-qr, index.test.js, "Tax ID number"
    pytest.param(
        "00020101021129370016A000000677010111021301234567890125802TH530376463040CBD",
        ThaiQR(point_of_initiation=STATIC, merchant_account=national_id("0123456789012")),
        False,
        id="promptpay-qr: Tax ID number",
    ),
    # dtinth/promptpay-qr, index.test.js, "Amount" (4.22)
    pytest.param(
        "00020101021229370016A000000677010111011300660000000005802TH530376454044.226304E469",
        ThaiQR(
            point_of_initiation=DYNAMIC,
            merchant_account=mobile("0066000000000"),
            amount_satang=422,
        ),
        False,
        id="promptpay-qr: Amount",
    ),
    # maythiwat/promptparse, src/index.test.ts, "Generate Any ID"
    pytest.param(
        "00020101021129370016A0000006770101110113006681222333353037645802TH63041DCF",
        ThaiQR(point_of_initiation=STATIC, merchant_account=mobile("0066812223333")),
        True,
        id="promptparse: Generate Any ID",
    ),
    # maythiwat/promptparse, src/index.test.ts, "Generate Any ID with amount"
    pytest.param(
        "00020101021229370016A0000006770101110113006681222333353037645802TH540530.0063043CAD",
        ThaiQR(
            point_of_initiation=DYNAMIC,
            merchant_account=mobile("0066812223333"),
            amount_satang=3000,
        ),
        False,
        id="promptparse: Generate Any ID with amount",
    ),
    # maythiwat/promptparse, src/index.test.ts, "Parse payload (strict) with valid checksum"
    pytest.param(
        "00020101021229370016A0000006770101110113006680111111153037645802TH540520.15630442BE",
        ThaiQR(
            point_of_initiation=DYNAMIC,
            merchant_account=mobile("0066801111111"),
            amount_satang=2015,
        ),
        False,
        id="promptparse: Parse payload (strict) with valid checksum",
    ),
    # maythiwat/promptparse, src/index.test.ts, "Generate TrueMoney QR"
    pytest.param(
        "00020101021129390016A000000677010111031514000080111111153037645802TH63047C0F",
        ThaiQR(point_of_initiation=STATIC, merchant_account=ewallet("140000801111111")),
        True,
        id="promptparse: Generate TrueMoney QR",
    ),
    # maythiwat/promptparse, src/index.test.ts, "Generate TrueMoney QR with amount and message"
    # (the message, UCS-2 hex in tag 81, is kept verbatim)
    pytest.param(
        "00020101021229390016A000000677010111031514000080111111153037645802TH540510.05"
        "814800480065006C006C006F00200057006F0072006C006400216304F5A2",
        ThaiQR(
            point_of_initiation=DYNAMIC,
            merchant_account=ewallet("140000801111111"),
            amount_satang=1005,
            other_fields=(("81", "00480065006C006C006F00200057006F0072006C00640021"),),
        ),
        False,
        id="promptparse: Generate TrueMoney QR with amount and message",
    ),
    # maythiwat/promptparse, src/index.test.ts, "Generate Bill Payment with Ref.3"
    pytest.param(
        "00020101021130620016A000000677010112011301122334455660211CUSTOMER0010306INV001"
        "53037645802TH62070703SCB6304780E",
        ThaiQR(
            point_of_initiation=STATIC,
            merchant_account=BillPayment(
                biller_id="0112233445566", reference_1="CUSTOMER001", reference_2="INV001"
            ),
            additional_data=AdditionalData(terminal_label="SCB"),
        ),
        True,
        id="promptparse: Generate Bill Payment with Ref.3",
    ),
    # maythiwat/promptparse, src/index.test.ts, "Convert BOT Barcode to Bill Payment (Valid)"
    pytest.param(
        "00020101021130550016A0000006770101120115099999999999990021211122233344453037645802TH"
        "63043EE7",
        ThaiQR(
            point_of_initiation=STATIC,
            merchant_account=BillPayment(biller_id="099999999999990", reference_1="111222333444"),
        ),
        True,
        id="promptparse: BOT barcode to bill payment",
    ),
    # maythiwat/promptparse, src/index.test.ts, "Convert BOT Barcode to Bill Payment (Valid,
    # with Ref.2 and amount)"
    pytest.param(
        "00020101021230650016A00000067701011201150994000165501000212123456789012030667042953"
        "037645802TH54073649.2263044534",
        ThaiQR(
            point_of_initiation=DYNAMIC,
            merchant_account=BillPayment(
                biller_id="099400016550100", reference_1="123456789012", reference_2="670429"
            ),
            amount_satang=364922,
        ),
        False,
        id="promptparse: BOT barcode to bill payment with amount",
    ),
    # kittinan/php-promptpay-qr, tests/PromptPayTest.php, testGeneratePayload (13371337.75)
    pytest.param(
        "00020101021229370016A000000677010111011300668912345675802TH5303764541113371337.756304B7D7",
        ThaiQR(
            point_of_initiation=DYNAMIC,
            merchant_account=mobile("0066891234567"),
            amount_satang=1337133775,
        ),
        False,
        id="php-promptpay-qr: mobile, 13371337.75",
    ),
    # kittinan/php-promptpay-qr, tests/PromptPayTest.php, testGeneratePayload (ID, 420)
    pytest.param(
        "00020101021229370016A000000677010111021312345678901235802TH53037645406420.006304BF7B",
        ThaiQR(
            point_of_initiation=DYNAMIC,
            merchant_account=national_id("1234567890123"),
            amount_satang=42000,
        ),
        False,
        id="php-promptpay-qr: ID, 420",
    ),
    # kazekim/promptpay-qr-go, promptpayqr_test.go, TestGenerateBillPaymentPayloadMustValid
    pytest.param(
        "00020101021230570016A00000067701011201153110400394751010206REF0010304REF2530376454"
        "06555.555802TH62100706SCB001630437C6",
        ThaiQR(
            point_of_initiation=DYNAMIC,
            merchant_account=BillPayment(
                biller_id="311040039475101", reference_1="REF001", reference_2="REF2"
            ),
            amount_satang=55555,
            additional_data=AdditionalData(terminal_label="SCB001"),
        ),
        True,
        id="promptpay-qr-go: TestGenerateBillPaymentPayloadMustValid",
    ),
    # pheerathach/promptpay, src/test/java/com/github/pheerathach/ThaiQRPromptPayTest.java,
    # testCreditTransferMobileNumberWithAmount (a static QR with an amount)
    pytest.param(
        "00020101021129370016A0000006770101110113006600000000053037645406100.005802TH6304D19E",
        ThaiQR(
            point_of_initiation=STATIC,
            merchant_account=mobile("0066000000000"),
            amount_satang=10000,
        ),
        True,
        id="pheerathach: static with amount",
    ),
    # pheerathach/promptpay, same file, testCreditTransferMobileNumberWithAmountZero
    pytest.param(
        "00020101021129370016A00000067701011101130066000000000530376454040.005802TH6304FB56",
        ThaiQR(
            point_of_initiation=STATIC, merchant_account=mobile("0066000000000"), amount_satang=0
        ),
        True,
        id="pheerathach: static with amount 0",
    ),
    # jojoee/promptpay (Python), tests/test_qrcode_generate_payload.py, test_ewallet_id_with_amount
    pytest.param(
        "00020101021229390016A00000067701011103150049990002885055802TH530376454071515.756304522C",
        ThaiQR(
            point_of_initiation=DYNAMIC,
            merchant_account=ewallet("004999000288505"),
            amount_satang=151575,
        ),
        False,
        id="jojoee: e-wallet with amount",
    ),
]


@pytest.mark.parametrize(("payload", "expected", "canonical"), PUBLIC_VECTORS)
def test_a_published_promptpay_payload_decodes_to_its_fields_and_re_encodes_to_the_same_objects(
    payload: str, expected: ThaiQR, canonical: bool
) -> None:
    assert decode(payload) == expected
    again = encode(expected)
    if canonical:
        assert again == payload
    else:  # the same data objects, in ascending id order
        assert again != payload
        objects = [obj for obj in data_objects(payload) if obj[0] != "63"]
        objects_again = [obj for obj in data_objects(again) if obj[0] != "63"]
        assert objects_again == sorted(objects)
    assert decode(again) == expected


def test_the_published_payload_with_a_wrong_checksum_is_refused_as_a_bad_crc() -> None:
    # maythiwat/promptparse, src/index.test.ts, "Parse payload (strict) with invalid checksum"
    with pytest.raises(QRBadCRC):
        decode(
            "00020101021229370016A0000006770101110113006680111111153037645802TH540520.156304FFFF"
        )


def test_an_amount_without_decimals_reads_as_whole_baht_and_re_encodes_with_two() -> None:
    payload = with_crc(
        "000201010212"
        + tlv("29", "0016A00000067701011101130066812223333")
        + "5303764"
        + "5403420"
        + "5802TH"
    )
    qr = decode(payload)
    assert qr.amount_satang == 42000
    assert "5406420.00" in encode(qr)


# --- the dynamic QR of a payment request ---------------------------------------------------


def test_a_payment_request_gives_a_dynamic_bill_payment_qr_with_amount_name_and_city() -> None:
    qr = payment_request_qr(
        biller_id="010555012345601",
        reference_1="01J5Z8K3M9Q2R7T4V6W8",
        reference_2="X0Y2Z4",
        amount_satang=12_345,
        merchant_name="SOMCHAI NOODLES",
        merchant_city="BANGKOK",
        terminal_label="POS01",
    )
    payload = encode(qr)
    assert payload == with_crc(
        "000201"  # payload format indicator 01
        "010212"  # dynamic
        + tlv(
            "30",
            "0016A000000677010112"  # PromptPay bill payment
            "0115010555012345601"  # biller ID
            "022001J5Z8K3M9Q2R7T4V6W8"  # reference 1
            "0306X0Y2Z4",  # reference 2
        )
        + "5303764"  # THB
        + "5406123.45"
        + "5802TH"
        + "5915SOMCHAI NOODLES"
        + "6007BANGKOK"
        + tlv("62", "0705POS01")  # terminal label
    )
    assert payload.endswith("630461BA")
    assert decode(payload) == qr


def test_a_payment_request_with_a_name_too_long_for_the_qr_is_refused_not_truncated() -> None:
    with pytest.raises(QRBadField) as refused:
        payment_request_qr(
            biller_id="010555012345601",
            reference_1="REF1",
            reference_2=None,
            amount_satang=100,
            merchant_name="A" * 26,
            merchant_city="BANGKOK",
        )
    assert refused.value.tag == "59"


# --- refusals: one row per rule -------------------------------------------------------------

AID_29 = "0016A000000677010111"
AID_30 = "0016A000000677010112"
ACCOUNT = tlv("29", AID_29 + "01130066812223333")
BILL = AID_30 + "0115099999999999990"  # the start of a tag-30 value: AID and biller ID
GOOD_OBJECTS = {
    "00": "000201",
    "01": "010212",
    "29": ACCOUNT,
    "53": "5303764",
    "54": "5406100.00",
    "58": "5802TH",
}


def built(
    replace: dict[str, str] | None = None, drop: tuple[str, ...] = (), extra: tuple[str, ...] = ()
) -> str:
    """GOOD's data objects, some replaced or dropped, ``extra`` after them, and a right CRC."""
    objects = {**GOOD_OBJECTS, **(replace or {})}
    body = "".join(value for tag, value in objects.items() if tag not in drop) + "".join(extra)
    body += "6304"
    return body + f"{binascii.crc_hqx(body.encode('utf-8'), 0xFFFF):04X}"


def account(value: str) -> dict[str, str]:
    """Replace the merchant account (29) by a template with ``value``."""
    return {"29": tlv(value[:2], value[2:])}


GOOD = built()
GOOD_BODY = GOOD[:-8]
assert GOOD[-4:].lower() != GOOD[-4:], "the lower-case row needs a CRC with a letter"
FOUR_FULL = tuple(tlv(str(tag), "X" * 99) for tag in (80, 81, 82, 83))


def of_length(size: int) -> str:
    """A well-formed payload of ``size`` characters, padded by tag 84."""
    padding = size - len(built(extra=FOUR_FULL)) - 4
    payload = built(extra=(*FOUR_FULL, tlv("84", "Y" * padding)))
    assert len(payload) == size
    return payload


TOO_LONG = of_length(513)

REFUSALS = [
    pytest.param(
        GOOD[:-4] + f"{int(GOOD[-4:], 16) ^ 1:04X}", QRBadCRC, "qr_bad_crc", id="a wrong CRC"
    ),
    pytest.param(GOOD[:-4] + GOOD[-4:].lower(), QRBadCRC, "qr_bad_crc", id="a lower-case CRC"),
    pytest.param(GOOD_BODY + "6303ABC", QRBadCRC, "qr_bad_crc", id="a CRC of 3 digits"),
    pytest.param(GOOD_BODY + "5901X" + GOOD[-8:], QRBadCRC, "qr_bad_crc", id="another body's CRC"),
    pytest.param(
        GOOD_BODY.replace("5802TH", "") + "63041234" + "5802TH",
        QRCRCNotLast,
        "qr_crc_not_last",
        id="a CRC before the country",
    ),
    pytest.param(
        GOOD_BODY + "5999SHOP", QRLengthOverflow, "qr_length_overflow", id="a length past the end"
    ),
    pytest.param(
        GOOD_BODY + "590", QRLengthOverflow, "qr_length_overflow", id="a truncated header"
    ),
    pytest.param(
        built(account("29" + AID_29 + "0120" + "0066812223333")),
        QRLengthOverflow,
        "qr_length_overflow",
        id="a sub-tag length past its template",
    ),
    pytest.param(
        built(extra=(tlv("62", "0710ABC"),)),
        QRLengthOverflow,
        "qr_length_overflow",
        id="an additional-data length past its template",
    ),
    pytest.param(built(extra=("5802TH",)), QRDuplicateTag, "qr_duplicate_tag", id="two countries"),
    pytest.param(
        built(account("29" + AID_29 + AID_29 + "01130066812223333")),
        QRDuplicateTag,
        "qr_duplicate_tag",
        id="two AIDs in 29",
    ),
    pytest.param(
        built(extra=(tlv("62", "0703ABC0703DEF"),)),
        QRDuplicateTag,
        "qr_duplicate_tag",
        id="two terminal labels in 62",
    ),
    pytest.param(
        built(extra=(tlv("31", "0002AB0002CD"),)),
        QRDuplicateTag,
        "qr_duplicate_tag",
        id="two ids in another merchant account template",
    ),
    pytest.param(built({"53": "5303840"}), QRBadCurrency, "qr_bad_currency", id="US dollars"),
    pytest.param(
        built({"53": "5303THB"}), QRBadCurrency, "qr_bad_currency", id="a letter currency"
    ),
    pytest.param(
        TOO_LONG, QRPayloadTooLong, "qr_payload_too_long", id="513 well-formed characters"
    ),
    pytest.param("0" * 100_000, QRPayloadTooLong, "qr_payload_too_long", id="a huge input"),
    pytest.param(built(extra=("5A02TH",)), QRBadHeader, "qr_bad_header", id="a letter in an id"),
    pytest.param(
        built(extra=("590ASHOP",)), QRBadHeader, "qr_bad_header", id="a letter in a length"
    ),
    pytest.param(built(extra=("5900",)), QRBadHeader, "qr_bad_header", id="a zero length"),
    pytest.param(
        built(account("29" + AID_29 + "01 30066812223333")),
        QRBadHeader,
        "qr_bad_header",
        id="a space in a sub-tag length",
    ),
    pytest.param(built(drop=("00",)), QRMissingField, "qr_missing_field", id="no format indicator"),
    pytest.param(
        built(drop=("01",)), QRMissingField, "qr_missing_field", id="no point of initiation"
    ),
    pytest.param(built(drop=("53",)), QRMissingField, "qr_missing_field", id="no currency"),
    pytest.param(built(drop=("58",)), QRMissingField, "qr_missing_field", id="no country"),
    pytest.param(GOOD_BODY, QRMissingField, "qr_missing_field", id="no CRC"),
    pytest.param(built(drop=("29",)), QRMissingField, "qr_missing_field", id="no merchant account"),
    pytest.param(
        built(account("29" + AID_29)), QRMissingField, "qr_missing_field", id="no proxy in 29"
    ),
    pytest.param(
        built(account("29" + "01130066812223333")),
        QRMissingField,
        "qr_missing_field",
        id="no AID in 29",
    ),
    pytest.param(
        built(account("30" + BILL)), QRMissingField, "qr_missing_field", id="no reference 1"
    ),
    pytest.param(built({"54": "54031.5"}), QRBadAmount, "qr_bad_amount", id="an amount of 1.5"),
    pytest.param(built({"54": "540412.3"}), QRBadAmount, "qr_bad_amount", id="an amount of 12.3"),
    pytest.param(
        built({"54": "541412345678901.00"}),
        QRBadAmount,
        "qr_bad_amount",
        id="eleven integer digits",
    ),
    pytest.param(built(extra=("5905สมชาย",)), QRBadCharacter, "qr_bad_character", id="a Thai name"),
    pytest.param(built(extra=("5905SHOP\n",)), QRBadCharacter, "qr_bad_character", id="a newline"),
    pytest.param(built(extra=("6007BANG\x00OK",)), QRBadCharacter, "qr_bad_character", id="a NUL"),
    pytest.param(
        built(account("30" + BILL + "0203A\x7fB")), QRBadCharacter, "qr_bad_character", id="a DEL"
    ),
    pytest.param(
        built(extra=(tlv("62", "0703A\tB"),)), QRBadCharacter, "qr_bad_character", id="a tab"
    ),
    pytest.param(
        built({"01": "010213"}),
        QRBadPointOfInitiation,
        "qr_bad_point_of_initiation",
        id="point of initiation 13",
    ),
    pytest.param(
        built({"01": "01011"}),
        QRBadPointOfInitiation,
        "qr_bad_point_of_initiation",
        id="point of initiation 1",
    ),
    pytest.param(built({"00": "000202"}), QRBadField, "qr_bad_field", id="format indicator 02"),
    pytest.param(
        built(drop=("00",), extra=("000201",)),
        QRBadField,
        "qr_bad_field",
        id="format indicator not first",
    ),
    pytest.param(built({"58": "5802LA"}), QRBadField, "qr_bad_field", id="country LA"),
    pytest.param(
        built(account("29" + "0016A000000677010114" + "01130066812223333")),
        QRBadField,
        "qr_bad_field",
        id="an unknown AID in 29",
    ),
    pytest.param(
        built(account("30" + AID_29 + "0115099999999999990" + "0204REF1")),
        QRBadField,
        "qr_bad_field",
        id="the transfer AID in 30",
    ),
    pytest.param(
        built(account("29" + AID_29 + "01130081222333312")),
        QRBadField,
        "qr_bad_field",
        id="a mobile number without 0066",
    ),
    pytest.param(
        built(account("29" + AID_29 + "0212123456789012")),
        QRBadField,
        "qr_bad_field",
        id="a 12-digit ID",
    ),
    pytest.param(
        built(account("29" + AID_29 + "01130066812223333" + "02131234567890123")),
        QRBadField,
        "qr_bad_field",
        id="two proxies in 29",
    ),
    pytest.param(
        built(account("29" + AID_29 + "04100041234567")),
        QRBadField,
        "qr_bad_field",
        id="the bank-account proxy 29.04",
    ),
    pytest.param(
        built(extra=(tlv("30", BILL + "0204REF1"),)),
        QRBadField,
        "qr_bad_field",
        id="both 29 and 30",
    ),
    pytest.param(
        built(account("30" + AID_30 + "011409999999999999" + "0204REF1")),
        QRBadField,
        "qr_bad_field",
        id="a 14-digit biller ID",
    ),
    pytest.param(
        built(account("30" + BILL + "0221" + "R" * 21)),
        QRBadField,
        "qr_bad_field",
        id="a 21-char reference",
    ),
    pytest.param(
        built(account("30" + BILL + "0204REF1" + "0402XY")),
        QRBadField,
        "qr_bad_field",
        id="an unknown sub-tag in 30",
    ),
    pytest.param(
        built(extra=(tlv("59", "N" * 26),)), QRBadField, "qr_bad_field", id="a 26-char name"
    ),
    pytest.param(
        built(extra=(tlv("60", "C" * 16),)), QRBadField, "qr_bad_field", id="a 16-char city"
    ),
    pytest.param(
        built(extra=(tlv("62", "0904AMEA"),)),
        QRBadField,
        "qr_bad_field",
        id="a 4-char data request",
    ),
]


@pytest.mark.parametrize(("payload", "error", "code"), REFUSALS)
def test_a_payload_breaking_a_rule_is_refused_with_that_rules_own_error_and_code(
    payload: str, error: type[QRError], code: str
) -> None:
    with pytest.raises(QRError) as refused:
        decode(payload)
    assert type(refused.value) is error
    assert refused.value.code == error.code == code


def test_every_error_class_has_a_refusal_row_and_its_own_stable_code() -> None:
    classes = set(QRError.__subclasses__())
    assert {row.values[1] for row in REFUSALS} == classes
    codes = [cls.code for cls in classes]
    assert len(set(codes)) == len(codes)
    assert all(code.startswith("qr_") and code == code.lower() for code in codes)


def test_a_payload_of_exactly_512_characters_is_accepted() -> None:
    assert decode(of_length(512)).other_fields[-1][0] == "84"


ACCEPTED_AMOUNTS = [
    ("0", 0),
    ("0.00", 0),
    ("1", 100),
    ("0.01", 1),
    ("4.22", 422),
    ("0000000001.50", 150),
    ("9999999999", 999_999_999_900),
    ("9999999999.99", 10**12 - 1),
]
REFUSED_AMOUNTS = [
    "1.5",
    "1.",
    ".50",
    "1.505",
    "-1.00",
    "+1.00",
    "1,000.00",
    "1e3",
    "12345678901",
    "10000000000.00",
    " 1.00",
    "1.00 ",
    "1 .00",
    "0x10",
    "1.0O",
]


@pytest.mark.parametrize(("text", "amount_satang"), ACCEPTED_AMOUNTS)
def test_an_amount_of_up_to_ten_digits_and_zero_or_two_decimals_is_read_exactly_in_satang(
    text: str, amount_satang: int
) -> None:
    assert decode(built({"54": tlv("54", text)})).amount_satang == amount_satang


@pytest.mark.parametrize("text", REFUSED_AMOUNTS)
def test_any_other_amount_text_is_refused_including_one_decimal(text: str) -> None:
    with pytest.raises(QRBadAmount):
        decode(built({"54": tlv("54", text)}))


# --- encode refuses what decode would refuse ------------------------------------------------

VALID = ThaiQR(
    point_of_initiation=DYNAMIC,
    merchant_account=BillPayment(biller_id="099999999999990", reference_1="REF1"),
    amount_satang=100,
    merchant_name="SHOP",
    merchant_city="BANGKOK",
)
BAD_VALUES = [
    pytest.param({"merchant_name": "N" * 26}, QRBadField, id="a 26-char name"),
    pytest.param({"merchant_city": "C" * 16}, QRBadField, id="a 16-char city"),
    pytest.param({"merchant_name": ""}, QRBadField, id="an empty name"),
    pytest.param({"merchant_name": "ร้านค้า"}, QRBadCharacter, id="a Thai name"),
    pytest.param({"merchant_city": "BKK\r"}, QRBadCharacter, id="a carriage return"),
    pytest.param({"amount_satang": 1.5}, QRBadAmount, id="a float amount"),
    pytest.param({"amount_satang": True}, QRBadAmount, id="a bool amount"),
    pytest.param({"amount_satang": -1}, QRBadAmount, id="a negative amount"),
    pytest.param({"amount_satang": 10**12}, QRBadAmount, id="10**12 satang"),
    pytest.param({"currency": "840"}, QRBadCurrency, id="US dollars"),
    pytest.param({"country": "LA"}, QRBadField, id="country LA"),
    pytest.param(
        {"point_of_initiation": "13"}, QRBadPointOfInitiation, id="point of initiation 13"
    ),
    pytest.param(
        {"merchant_account": BillPayment(biller_id="099999999999990", reference_1="R" * 21)},
        QRBadField,
        id="a 21-char reference",
    ),
    pytest.param(
        {"merchant_account": BillPayment(biller_id="099999999999990", reference_1="")},
        QRBadField,
        id="an empty reference",
    ),
    pytest.param(
        {"merchant_account": BillPayment(biller_id="12345", reference_1="R")},
        QRBadField,
        id="a 5-digit biller ID",
    ),
    pytest.param(
        {"merchant_account": mobile("0812223333")}, QRBadField, id="a local mobile number"
    ),
    pytest.param({"merchant_account": ewallet("1234")}, QRBadField, id="a short e-wallet ID"),
    pytest.param({"additional_data": AdditionalData()}, QRBadField, id="empty additional data"),
    pytest.param(
        {
            "additional_data": AdditionalData(
                bill_number="B" * 25,
                store_label="S" * 25,
                reference_label="R" * 25,
                terminal_label="T" * 25,
            )
        },
        QRBadField,
        id="additional data over 99 characters",
    ),
    pytest.param(
        {"additional_data": AdditionalData(terminal_label="T" * 26)},
        QRBadField,
        id="a 26-char label",
    ),
    pytest.param(
        {"additional_data": AdditionalData(consumer_data_request="AX")},
        QRBadField,
        id="data request AX",
    ),
    pytest.param(
        {"additional_data": AdditionalData(other_fields=(("07", "T"),))},
        QRBadField,
        id="a named sub-tag among the other fields",
    ),
    pytest.param(
        {"other_fields": (("59", "SHOP"),)}, QRBadField, id="a modelled id among the others"
    ),
    pytest.param({"other_fields": (("63", "ABCD"),)}, QRBadField, id="a CRC among the others"),
    pytest.param(
        {"other_fields": (("61", "10200"), ("52", "5812"))}, QRBadField, id="others unordered"
    ),
    pytest.param(
        {"other_fields": (("52", "5812"), ("52", "5813"))}, QRDuplicateTag, id="others twice"
    ),
    pytest.param({"other_fields": (("5A", "X"),)}, QRBadHeader, id="a letter in another id"),
    pytest.param({"other_fields": (("52", ""),)}, QRBadField, id="an empty other value"),
    pytest.param({"other_fields": (("31", "0005AB"),)}, QRLengthOverflow, id="a broken template"),
    pytest.param(
        {"other_fields": (("31", "0002AB0002AB"),)}, QRDuplicateTag, id="a template twice"
    ),
    pytest.param(
        {"other_fields": tuple((str(tag), "X" * 99) for tag in range(80, 85))},
        QRPayloadTooLong,
        id="a QR over 512 characters",
    ),
]


@pytest.mark.parametrize(("changes", "error"), BAD_VALUES)
def test_encode_refuses_a_value_that_breaks_a_rule_with_the_same_error_decode_gives(
    changes: dict, error: type[QRError]
) -> None:
    with pytest.raises(QRError) as refused:
        encode(msgspec.structs.replace(VALID, **changes))
    assert type(refused.value) is error


def test_the_largest_qr_without_other_fields_fits_in_512_characters() -> None:
    largest = ThaiQR(
        point_of_initiation=DYNAMIC,
        merchant_account=BillPayment(
            biller_id="9" * 15, reference_1="R" * 20, reference_2="S" * 20
        ),
        amount_satang=10**12 - 1,
        merchant_name="N" * 25,
        merchant_city="C" * 15,
        additional_data=AdditionalData(
            # 3 x (4 + 25) + (4 + 3) + 4 + 1: 62 at its maximum of 99 characters
            bill_number="B" * 25,
            store_label="S" * 25,
            terminal_label="T" * 25,
            consumer_data_request="AME",
            other_fields=(("99", "Z"),),
        ),
    )
    payload = encode(largest)
    assert len(payload.encode("utf-8")) <= 512
    assert decode(payload) == largest


# --- properties -----------------------------------------------------------------------------

ANS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def ans(max_size: int) -> st.SearchStrategy[str]:
    return st.text(ANS, min_size=1, max_size=max_size)


def digits(size: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=size, max_size=size)


def two_digit_ids(*excluded: str) -> list[str]:
    return [f"{n:02d}" for n in range(100) if f"{n:02d}" not in excluded]


MODELLED = ("00", "01", "29", "30", "53", "54", "58", "59", "60", "62", "63")
TEMPLATE_IDS = {f"{n:02d}" for n in range(26, 52)} | {"64"}
NAMED_ADDITIONAL = [
    "bill_number",
    "mobile_number",
    "store_label",
    "loyalty_number",
    "reference_label",
    "customer_label",
    "terminal_label",
    "purpose_of_transaction",
]

accounts = st.one_of(
    st.one_of(
        digits(9).map(lambda number: mobile("0066" + number)),
        digits(13).map(national_id),
        digits(15).map(ewallet),
    ),
    st.builds(
        BillPayment,
        biller_id=digits(13) | digits(15),
        reference_1=ans(20),
        reference_2=st.none() | ans(20),
    ),
)
consumer_data_requests = st.permutations("AME").flatmap(
    lambda letters: st.integers(1, 3).map(lambda size: "".join(letters[:size]))
)
additional_data = st.builds(
    lambda named, request, others: AdditionalData(
        **named, consumer_data_request=request, other_fields=others
    ),
    st.dictionaries(st.sampled_from(NAMED_ADDITIONAL), ans(20), max_size=3),
    st.none() | consumer_data_requests,
    st.lists(
        st.tuples(st.sampled_from(two_digit_ids(*[f"{n:02d}" for n in range(1, 10)])), ans(10)),
        max_size=1,
    ).map(tuple),
).filter(lambda data: data != AdditionalData())


def other_value(tag: str) -> st.SearchStrategy[str]:
    if tag not in TEMPLATE_IDS:
        return ans(99)
    return st.lists(
        st.tuples(st.sampled_from(two_digit_ids()), ans(20)),
        min_size=1,
        max_size=3,
        unique_by=lambda sub: sub[0],
    ).map(lambda subs: "".join(tlv(*sub) for sub in subs))


other_fields = st.lists(st.sampled_from(two_digit_ids(*MODELLED)), unique=True, max_size=4).flatmap(
    lambda tags: st.tuples(
        *[other_value(tag).map(lambda value, tag=tag: (tag, value)) for tag in sorted(tags)]
    )
)
thai_qrs = st.builds(
    ThaiQR,
    point_of_initiation=st.sampled_from(PointOfInitiation),
    merchant_account=accounts,
    amount_satang=st.none() | st.integers(0, 10**12 - 1),
    merchant_name=st.none() | ans(25),
    merchant_city=st.none() | ans(15),
    additional_data=st.none() | additional_data,
    other_fields=other_fields,
)
printable = ANS | st.sampled_from("กé€")


@settings(max_examples=100, deadline=None)
@given(thai_qrs)
def test_decoding_an_encoded_qr_gives_back_the_same_value_in_at_most_512_bytes(qr: ThaiQR) -> None:
    try:
        payload = encode(qr)
    except QRPayloadTooLong:
        # only the verbatim other fields can take a QR past the limit
        shorter = encode(msgspec.structs.replace(qr, other_fields=()))
        assert len(shorter) + sum(4 + len(value) for _, value in qr.other_fields) > 512
        return
    assert len(payload.encode("utf-8")) <= 512
    assert decode(payload) == qr


big_other_fields = st.lists(
    st.sampled_from(two_digit_ids(*MODELLED, *TEMPLATE_IDS)), unique=True, min_size=1, max_size=6
).flatmap(
    lambda tags: st.tuples(
        *[
            st.text(ANS, min_size=40, max_size=99).map(lambda value, tag=tag: (tag, value))
            for tag in sorted(tags)
        ]
    )
)


@settings(max_examples=100, deadline=None)
@given(thai_qrs, big_other_fields)
def test_encode_never_gives_over_512_bytes_and_refuses_exactly_the_qrs_that_would_need_more(
    qr: ThaiQR, others: tuple[tuple[str, str], ...]
) -> None:
    qr = msgspec.structs.replace(qr, other_fields=others)
    size = len(encode(msgspec.structs.replace(qr, other_fields=()))) + sum(
        4 + len(value) for _, value in others
    )
    if size > 512:
        with pytest.raises(QRPayloadTooLong):
            encode(qr)
    else:
        payload = encode(qr)
        assert len(payload.encode("utf-8")) == size
        assert decode(payload) == qr


@settings(max_examples=100, deadline=None)
@given(thai_qrs, st.data())
def test_any_single_character_change_of_an_encoded_qr_is_refused(
    qr: ThaiQR, data: st.DataObject
) -> None:
    try:
        payload = encode(qr)
    except QRPayloadTooLong:
        return
    position = data.draw(st.integers(0, len(payload) - 1))
    char = data.draw(printable.filter(lambda char: char != payload[position]))
    with pytest.raises(QRError):
        decode(payload[:position] + char + payload[position + 1 :])


EXHAUSTIVE = {"promptpay-qr-go: TestGenerateBillPaymentPayloadMustValid", "promptpay-qr: Amount"}


@pytest.mark.parametrize(
    "payload", [*(row.values[0] for row in PUBLIC_VECTORS if row.id in EXHAUSTIVE), GOOD]
)
def test_every_single_character_change_of_a_valid_payload_is_refused_exhaustively(
    payload: str,
) -> None:
    for position, original in enumerate(payload):
        for code in range(0x20, 0x7F):
            if chr(code) == original:
                continue
            with pytest.raises(QRError):
                decode(payload[:position] + chr(code) + payload[position + 1 :])


@settings(max_examples=100, deadline=None)
@given(thai_qrs, st.data())
def test_a_changed_payload_with_its_crc_recomputed_is_refused_or_read_as_a_qr_that_round_trips(
    qr: ThaiQR, data: st.DataObject
) -> None:
    # With the CRC out of the way, every structural and value rule is exercised.
    try:
        body = encode(qr)[:-8]
    except QRPayloadTooLong:
        return
    start = data.draw(st.integers(0, len(body)))
    end = data.draw(st.integers(start, min(len(body), start + 4)))
    insert = data.draw(st.text(ANS | st.sampled_from("0123456789"), max_size=4))
    try:
        changed = decode(with_crc(body[:start] + insert + body[end:]))
    except QRError:
        return
    assert decode(encode(changed)) == changed


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600) | st.text(ANS, max_size=200).map(lambda body: with_crc(body)))
def test_decode_of_arbitrary_text_gives_a_qr_or_a_qr_error_and_nothing_else(text: str) -> None:
    try:
        qr = decode(text)
    except QRError:
        return
    assert encode(qr) and decode(encode(qr)) == qr
