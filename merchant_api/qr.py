"""Thai QR: the EMVCo merchant-presented-mode (MPM) codec, pure (no I/O, nothing of ours).

A payload is a run of data objects ``ID LL value``: a 2-digit id, a 2-digit length (01-99)
and that many characters. Templates hold data objects of their own: merchant account
information (26-51), additional data (62), the language template (64) and the unreserved
templates (80-99). The payload ends with the CRC, ``6304`` + 4 upper-case hex digits: the
CRC-16/CCITT-FALSE of everything before those 4 digits, ``6304`` included.

``encode(qr) -> str`` and ``decode(payload) -> ThaiQR`` are inverses: every ``ThaiQR`` that
``encode`` accepts comes back equal from ``decode``, and the two share one set of value rules
(``check``), so what one refuses the other refuses too. Every refusal is a ``QRError``
subclass with a stable ``code`` and the ``tag`` path it concerns (``"62.07"``).

Decisions (each is a rule of this codec, tested in tests/test_qr.py):

- Characters: the codec is ASCII-only. Every character of a payload must be printable ASCII
  (0x20-0x7E, EMVCo's "ans" set), so a non-ASCII or control character anywhere is
  ``qr_bad_character``. This also refuses Thai script in tag 64 (the alternate-language
  template); G-Wallet's merchant name and city are sent in Latin letters.
- Size: a payload is at most 512 characters (= bytes, the payload being ASCII); longer is
  ``qr_payload_too_long``, checked before anything else so a huge input costs nothing.
  ``encode`` refuses to produce a longer one the same way.
- Names are refused, never truncated: merchant name (59) at most 25 characters, city (60) at
  most 15, as EMVCo sets; longer is ``qr_bad_field``. Truncating would make
  ``decode(encode(x)) != x`` and silently change what the payer sees; the merchant's QR
  display name is a separate, short, ASCII field for the caller to keep.
- Amount (54): ``^[0-9]{1,10}(\\.[0-9]{2})?$`` baht, so from 0 to 9,999,999,999.99 (below
  10**12 satang). ``"420"`` (no decimals, which EMVCo allows) is read as 420.00;
  ``"1.5"``, ``"1."``, ``".50"``, ``"1.505"`` and ``"-1.00"`` are refused
  (``qr_bad_amount``): THB has two minor digits and every published PromptPay generator writes
  both, so one decimal is a broken generator, not something to guess at. ``0.00`` is
  accepted (a published vector has it); whether a zero payment makes sense is the service's
  rule. The amount is an ``int`` of satang; it is written with ``divmod``, never a float.
- Point of initiation (01) is required (Thai QR Payment requires it, though EMVCo does not):
  ``11`` static or ``12`` dynamic, anything else is ``qr_bad_point_of_initiation``.
- Mandatory: 00 (first, value ``01``), 01, one PromptPay merchant account template (29 or 30,
  not both), 53, 58, 63 (last). Merchant name and city are optional: the published
  PromptPay credit-transfer QRs have neither.
- Currency 53 must be ``764`` (THB) and country 58 ``TH``.
- PromptPay templates are read strictly: tag 29 must carry AID A000000677010111 and exactly
  one proxy (01 mobile ``0066`` + 9 digits, 02 national or tax ID of 13 digits, 03 e-wallet
  ID of 15 digits); tag 30 must carry AID A000000677010112, 01 biller ID (13 or 15 digits),
  02 reference 1 and optionally 03 reference 2 (each 1-20 "ans" characters). Any other
  sub-tag in 29 or 30 is ``qr_bad_field``. The bank-account proxy (29.04) is not supported.
- Other data objects (52 merchant category, 55-57 tip and fees, 61 postal code, other
  merchant account templates such as 31, 64, 65-79, 80-99) are kept verbatim in
  ``other_fields``, ascending by id; the merchant account templates (26-51) and 64 among them
  must still be well-formed TLV without duplicate ids. 80-99 are not checked as TLV: TrueMoney
  writes a plain message in 81. Additional-data sub-tags other than 01-09 are kept verbatim
  the same way.
- Canonical form: ``encode`` writes data objects in ascending id order (CRC last) and the
  amount with two decimals. Published payloads in another order (several libraries write 58
  before 53, or 54 after 58) decode to the same ``ThaiQR`` but re-encode in this order.
- Strictness of the CRC: the 4 hex digits must be upper case, so every single-character change
  of a valid payload is refused (CRC-16 detects every error burst of up to 16 bits, and a
  change inside the CRC itself no longer matches).
"""

from __future__ import annotations

import binascii
import enum
import re
from collections.abc import Callable

import msgspec

__all__ = [
    "AID_BILL_PAYMENT",
    "AID_CREDIT_TRANSFER",
    "MAX_PAYLOAD_LENGTH",
    "AdditionalData",
    "BillPayment",
    "CreditTransfer",
    "PointOfInitiation",
    "ProxyKind",
    "QRBadAmount",
    "QRBadCRC",
    "QRBadCharacter",
    "QRBadCurrency",
    "QRBadField",
    "QRBadHeader",
    "QRBadPointOfInitiation",
    "QRCRCNotLast",
    "QRDuplicateTag",
    "QRError",
    "QRLengthOverflow",
    "QRMissingField",
    "QRPayloadTooLong",
    "ThaiQR",
    "check",
    "crc16",
    "decode",
    "encode",
    "format_amount",
    "payment_request_qr",
]

MAX_PAYLOAD_LENGTH = 512
MAX_AMOUNT_SATANG = 10**12 - 1  # 9,999,999,999.99 THB: ten integer digits, 13 characters
AID_CREDIT_TRANSFER = "A000000677010111"  # PromptPay transfer to a proxy id, tag 29
AID_BILL_PAYMENT = "A000000677010112"  # PromptPay bill payment (domestic merchant), tag 30
CURRENCY_THB = "764"
COUNTRY_TH = "TH"

_TAG_FORMAT = "00"
_TAG_POINT_OF_INITIATION = "01"
_TAG_CREDIT_TRANSFER = "29"
_TAG_BILL_PAYMENT = "30"
_TAG_CURRENCY = "53"
_TAG_AMOUNT = "54"
_TAG_COUNTRY = "58"
_TAG_MERCHANT_NAME = "59"
_TAG_MERCHANT_CITY = "60"
_TAG_ADDITIONAL_DATA = "62"
_TAG_CRC = "63"
_MODELLED_TAGS = frozenset(
    {
        _TAG_FORMAT,
        _TAG_POINT_OF_INITIATION,
        _TAG_CREDIT_TRANSFER,
        _TAG_BILL_PAYMENT,
        _TAG_CURRENCY,
        _TAG_AMOUNT,
        _TAG_COUNTRY,
        _TAG_MERCHANT_NAME,
        _TAG_MERCHANT_CITY,
        _TAG_ADDITIONAL_DATA,
        _TAG_CRC,
    }
)
_MAX_VALUE_LENGTH = 99  # the length is two digits
_MAX_MERCHANT_NAME_LENGTH = 25
_MAX_MERCHANT_CITY_LENGTH = 15
_MAX_REFERENCE_LENGTH = 20
_MAX_ADDITIONAL_DATA_LENGTH = 25
_AMOUNT = re.compile(r"([0-9]{1,10})(?:\.([0-9]{2}))?")
_BILLER_ID = re.compile(r"[0-9]{13}(?:[0-9]{2})?")  # tax ID + 2-digit suffix (13 accepted)
_CRC = re.compile(r"[0-9A-F]{4}")


# --- errors ---------------------------------------------------------------------------------


class QRError(ValueError):
    """A payload or a ``ThaiQR`` value breaks a rule of the Thai QR format."""

    code = "qr_error"

    def __init__(self, tag: str, detail: str) -> None:
        super().__init__(f"{tag}: {detail}" if tag else detail)
        self.tag = tag  # the data object concerned, "62.07" for a sub-tag; "" for the whole
        self.detail = detail


class QRPayloadTooLong(QRError):
    """A payload is at most 512 characters."""

    code = "qr_payload_too_long"


class QRBadCharacter(QRError):
    """Every character is printable ASCII, 0x20-0x7E (EMVCo "ans")."""

    code = "qr_bad_character"


class QRBadHeader(QRError):
    """A data object starts with a 2-digit id and a 2-digit length from 01 to 99."""

    code = "qr_bad_header"


class QRLengthOverflow(QRError):
    """A data object (header and value) ends within the payload or template that holds it."""

    code = "qr_length_overflow"


class QRDuplicateTag(QRError):
    """An id appears at most once in the payload and at most once in each template."""

    code = "qr_duplicate_tag"


class QRCRCNotLast(QRError):
    """The CRC (63) is the last data object of the payload."""

    code = "qr_crc_not_last"


class QRBadCRC(QRError):
    """The CRC is 4 upper-case hex digits equal to the CRC-16/CCITT-FALSE of what precedes it."""

    code = "qr_bad_crc"


class QRMissingField(QRError):
    """00, 01, 53, 58, 63 and a PromptPay merchant account template (29 or 30) are present,
    and each template has its mandatory sub-tags."""

    code = "qr_missing_field"


class QRBadCurrency(QRError):
    """The transaction currency (53) is 764, the Thai baht."""

    code = "qr_bad_currency"


class QRBadAmount(QRError):
    """The amount (54) is 1-10 digits of baht with optionally exactly 2 decimals; an amount
    value is an int of satang from 0 to 10**12 - 1."""

    code = "qr_bad_amount"


class QRBadPointOfInitiation(QRError):
    """The point of initiation (01) is 11 (static) or 12 (dynamic)."""

    code = "qr_bad_point_of_initiation"


class QRBadField(QRError):
    """A data object has the form and length its id requires (format indicator 01 and first,
    country TH, known AID and sub-tags, proxy and biller ID shapes, EMVCo maximum lengths,
    other fields in ascending order)."""

    code = "qr_bad_field"


# --- the value ------------------------------------------------------------------------------


class PointOfInitiation(enum.StrEnum):
    STATIC = "11"  # shown again and again; the payer may enter the amount
    DYNAMIC = "12"  # made for one payment


class ProxyKind(enum.StrEnum):
    """The sub-tag of a PromptPay credit transfer (29) that holds the proxy id."""

    MOBILE = "01"  # "0066" + 9 digits (0812345678 -> 0066812345678)
    NATIONAL_ID = "02"  # national ID or tax ID, 13 digits
    EWALLET_ID = "03"  # 15 digits


class CreditTransfer(msgspec.Struct, frozen=True, kw_only=True, tag="credit_transfer"):
    """Tag 29, AID A000000677010111: a PromptPay transfer to a proxy id."""

    proxy_kind: ProxyKind
    proxy_id: str


class BillPayment(msgspec.Struct, frozen=True, kw_only=True, tag="bill_payment"):
    """Tag 30, AID A000000677010112: a bill payment to a biller, with the biller's references
    (G-Wallet: they identify the payment request)."""

    biller_id: str  # 30.01
    reference_1: str  # 30.02
    reference_2: str | None = None  # 30.03


class AdditionalData(msgspec.Struct, frozen=True, kw_only=True):
    """Tag 62. Each named field is 1-25 "ans" characters (consumer_data_request: 1-3 of
    A, M, E); ``other_fields`` keeps the sub-tags 00 and 10-99 verbatim, ascending by id."""

    bill_number: str | None = None  # 62.01
    mobile_number: str | None = None  # 62.02
    store_label: str | None = None  # 62.03
    loyalty_number: str | None = None  # 62.04
    reference_label: str | None = None  # 62.05
    customer_label: str | None = None  # 62.06
    terminal_label: str | None = None  # 62.07
    purpose_of_transaction: str | None = None  # 62.08
    consumer_data_request: str | None = None  # 62.09
    other_fields: tuple[tuple[str, str], ...] = ()


_ADDITIONAL_DATA_TAGS = {
    "01": "bill_number",
    "02": "mobile_number",
    "03": "store_label",
    "04": "loyalty_number",
    "05": "reference_label",
    "06": "customer_label",
    "07": "terminal_label",
    "08": "purpose_of_transaction",
    "09": "consumer_data_request",
}


class ThaiQR(msgspec.Struct, frozen=True, kw_only=True):
    """One Thai QR Payment (PromptPay) merchant-presented payload, as values."""

    point_of_initiation: PointOfInitiation  # 01
    merchant_account: BillPayment | CreditTransfer  # 30 or 29
    amount_satang: int | None = None  # 54
    currency: str = CURRENCY_THB  # 53
    country: str = COUNTRY_TH  # 58
    merchant_name: str | None = None  # 59
    merchant_city: str | None = None  # 60
    additional_data: AdditionalData | None = None  # 62
    other_fields: tuple[tuple[str, str], ...] = ()  # any other id, verbatim, ascending


def payment_request_qr(
    *,
    biller_id: str,
    reference_1: str,
    reference_2: str | None,
    amount_satang: int,
    merchant_name: str,
    merchant_city: str,
    terminal_label: str | None = None,
) -> ThaiQR:
    """The dynamic bill-payment QR of one payment request (checked: raises ``QRError``)."""
    qr = ThaiQR(
        point_of_initiation=PointOfInitiation.DYNAMIC,
        merchant_account=BillPayment(
            biller_id=biller_id, reference_1=reference_1, reference_2=reference_2
        ),
        amount_satang=amount_satang,
        merchant_name=merchant_name,
        merchant_city=merchant_city,
        additional_data=(
            None if terminal_label is None else AdditionalData(terminal_label=terminal_label)
        ),
    )
    check(qr)
    return qr


# --- encode ---------------------------------------------------------------------------------


def crc16(data: str) -> str:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of ASCII text, 4 upper-case hex digits."""
    return f"{binascii.crc_hqx(data.encode('ascii'), 0xFFFF):04X}"


def format_amount(amount_satang: int) -> str:
    """Satang as EMVCo baht with two decimals: 422 -> "4.22"."""
    baht, satang = divmod(amount_satang, 100)
    return f"{baht}.{satang:02d}"


def _tlv(tag: str, value: str, parent: str = "") -> str:
    if not 1 <= len(value) <= _MAX_VALUE_LENGTH:  # check() makes this unreachable
        path = f"{parent}.{tag}" if parent else tag
        raise QRBadField(path, f"a value is 1-99 characters, this one is {len(value)}")
    return f"{tag}{len(value):02d}{value}"


def encode(qr: ThaiQR) -> str:
    """The canonical payload of ``qr``: ids ascending, CRC last. Raises ``QRError``."""
    check(qr)
    fields: list[tuple[str, str]] = [
        (_TAG_FORMAT, "01"),
        (_TAG_POINT_OF_INITIATION, str(qr.point_of_initiation)),
        _account_field(qr.merchant_account),
        (_TAG_CURRENCY, qr.currency),
        (_TAG_COUNTRY, qr.country),
    ]
    if qr.amount_satang is not None:
        fields.append((_TAG_AMOUNT, format_amount(qr.amount_satang)))
    if qr.merchant_name is not None:
        fields.append((_TAG_MERCHANT_NAME, qr.merchant_name))
    if qr.merchant_city is not None:
        fields.append((_TAG_MERCHANT_CITY, qr.merchant_city))
    if qr.additional_data is not None:
        fields.append((_TAG_ADDITIONAL_DATA, _additional_data_value(qr.additional_data)))
    fields.extend(qr.other_fields)
    body = "".join(_tlv(tag, value) for tag, value in sorted(fields)) + _TAG_CRC + "04"
    payload = body + crc16(body)
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise QRPayloadTooLong("", f"the payload would be {len(payload)} characters, over 512")
    return payload


def _template(tag: str, fields: list[tuple[str, str]]) -> str:
    return "".join(_tlv(sub, value, tag) for sub, value in sorted(fields))


def _account_field(account: BillPayment | CreditTransfer) -> tuple[str, str]:
    if isinstance(account, CreditTransfer):
        fields = [("00", AID_CREDIT_TRANSFER), (str(account.proxy_kind), account.proxy_id)]
        return _TAG_CREDIT_TRANSFER, _template(_TAG_CREDIT_TRANSFER, fields)
    fields = [("00", AID_BILL_PAYMENT), ("01", account.biller_id), ("02", account.reference_1)]
    if account.reference_2 is not None:
        fields.append(("03", account.reference_2))
    return _TAG_BILL_PAYMENT, _template(_TAG_BILL_PAYMENT, fields)


def _additional_data_value(data: AdditionalData) -> str:
    fields = [
        (sub, value)
        for sub, name in _ADDITIONAL_DATA_TAGS.items()
        if (value := getattr(data, name)) is not None
    ]
    fields.extend(data.other_fields)
    return _template(_TAG_ADDITIONAL_DATA, fields)


# --- the value rules (shared by encode and decode) ------------------------------------------


def check(qr: ThaiQR) -> None:
    """Raise the ``QRError`` for the first rule ``qr`` breaks; ``encode`` accepts it otherwise
    (unless the whole payload would pass 512 characters)."""
    assert isinstance(qr, ThaiQR), f"not a ThaiQR: {qr!r}"
    if qr.point_of_initiation not in (PointOfInitiation.STATIC, PointOfInitiation.DYNAMIC):
        raise QRBadPointOfInitiation(
            _TAG_POINT_OF_INITIATION, f"{qr.point_of_initiation!r} is neither 11 nor 12"
        )
    _check_account(qr.merchant_account)
    if qr.currency != CURRENCY_THB:
        raise QRBadCurrency(_TAG_CURRENCY, f"{qr.currency!r} is not 764 (THB)")
    amount = qr.amount_satang
    if amount is not None and (type(amount) is not int or not 0 <= amount <= MAX_AMOUNT_SATANG):
        raise QRBadAmount(_TAG_AMOUNT, f"{amount!r} is not an int of satang in 0..10**12-1")
    if qr.country != COUNTRY_TH:
        raise QRBadField(_TAG_COUNTRY, f"{qr.country!r} is not TH")
    _check_text(_TAG_MERCHANT_NAME, qr.merchant_name, _MAX_MERCHANT_NAME_LENGTH)
    _check_text(_TAG_MERCHANT_CITY, qr.merchant_city, _MAX_MERCHANT_CITY_LENGTH)
    if qr.additional_data is not None:
        _check_additional_data(qr.additional_data)
    _check_other_fields("", qr.other_fields, reserved=_MODELLED_TAGS, templates=_is_template)


def _check_text(tag: str, value: str | None, max_length: int, *, required: bool = False) -> None:
    if value is None:
        if required:
            raise QRMissingField(tag, "missing")
        return
    assert isinstance(value, str), f"{tag}: not a str: {value!r}"
    if not (value.isascii() and value.isprintable()):
        raise QRBadCharacter(tag, "only printable ASCII (0x20-0x7E) is allowed")
    if not 1 <= len(value) <= max_length:
        raise QRBadField(tag, f"is {len(value)} characters; allowed 1-{max_length}")


def _check_account(account: BillPayment | CreditTransfer) -> None:
    if isinstance(account, CreditTransfer):
        kind, proxy = account.proxy_kind, account.proxy_id
        tag = f"{_TAG_CREDIT_TRANSFER}.{kind}"
        _check_text(tag, proxy, _MAX_VALUE_LENGTH, required=True)
        if kind == ProxyKind.MOBILE:
            ok = len(proxy) == 13 and proxy.startswith("0066") and proxy.isdigit()
        elif kind == ProxyKind.NATIONAL_ID:
            ok = len(proxy) == 13 and proxy.isdigit()
        elif kind == ProxyKind.EWALLET_ID:
            ok = len(proxy) == 15 and proxy.isdigit()
        else:
            raise QRBadField(_TAG_CREDIT_TRANSFER, f"unknown proxy kind {kind!r}")
        if not ok:
            raise QRBadField(tag, f"{proxy!r} is not a {ProxyKind(kind).name.lower()} proxy id")
        return
    assert isinstance(account, BillPayment), f"not a merchant account: {account!r}"
    _check_text(f"{_TAG_BILL_PAYMENT}.01", account.biller_id, 15, required=True)
    if not _BILLER_ID.fullmatch(account.biller_id):
        raise QRBadField(f"{_TAG_BILL_PAYMENT}.01", "a biller ID is 13 or 15 digits")
    _check_text(
        f"{_TAG_BILL_PAYMENT}.02", account.reference_1, _MAX_REFERENCE_LENGTH, required=True
    )
    _check_text(f"{_TAG_BILL_PAYMENT}.03", account.reference_2, _MAX_REFERENCE_LENGTH)


def _check_additional_data(data: AdditionalData) -> None:
    assert isinstance(data, AdditionalData), f"not AdditionalData: {data!r}"
    present = False
    for sub, name in _ADDITIONAL_DATA_TAGS.items():
        value = getattr(data, name)
        tag = f"{_TAG_ADDITIONAL_DATA}.{sub}"
        if sub == "09":
            _check_text(tag, value, 3)
            if value is not None and (set(value) - set("AME") or len(set(value)) != len(value)):
                raise QRBadField(tag, "a consumer data request is 1-3 distinct of A, M, E")
        else:
            _check_text(tag, value, _MAX_ADDITIONAL_DATA_LENGTH)
        present = present or value is not None
    _check_other_fields(
        _TAG_ADDITIONAL_DATA,
        data.other_fields,
        reserved=frozenset(_ADDITIONAL_DATA_TAGS),
        templates=lambda sub: False,  # 50-99 "templates" are kept verbatim, as 80-99 are
    )
    if not present and not data.other_fields:
        raise QRBadField(_TAG_ADDITIONAL_DATA, "additional data holds at least one field")
    if len(_additional_data_value(data)) > _MAX_VALUE_LENGTH:
        raise QRBadField(_TAG_ADDITIONAL_DATA, "additional data is over 99 characters")


def _is_template(tag: str) -> bool:
    # 80-99 are "unreserved templates" in EMVCo, but TrueMoney writes a plain message in 81
    # (a published vector), so they are kept verbatim without the TLV check.
    return "26" <= tag <= "51" or tag == "64"


def _check_other_fields(
    parent: str,
    fields: tuple[tuple[str, str], ...],
    *,
    reserved: frozenset[str],
    templates: Callable[[str], bool],
) -> None:
    previous = ""
    for field in fields:
        assert isinstance(field, tuple) and len(field) == 2, f"not a (tag, value): {field!r}"
        tag, value = field
        path = f"{parent}.{tag}" if parent else tag
        if not (isinstance(tag, str) and len(tag) == 2 and tag.isascii() and tag.isdigit()):
            raise QRBadHeader(path, "an id is 2 digits")
        if tag in reserved:
            raise QRBadField(path, "this id has its own field")
        if tag == previous:
            raise QRDuplicateTag(path, "appears twice")
        if tag < previous:
            raise QRBadField(path, "other fields are in ascending id order")
        previous = tag
        _check_text(path, value, _MAX_VALUE_LENGTH, required=True)
        if templates(tag):
            _parse(value, path)


# --- decode ---------------------------------------------------------------------------------


def _parse(text: str, parent: str) -> dict[str, str]:
    """The data objects of ``text`` (a payload or a template's value), in order."""
    fields: dict[str, str] = {}
    position, end = 0, len(text)
    while position < end:
        if position + 4 > end:
            raise QRLengthOverflow(parent, f"a header at {position} runs past the end")
        tag, length = text[position : position + 2], text[position + 2 : position + 4]
        path = f"{parent}.{tag}" if parent else tag
        if not (tag.isascii() and tag.isdigit() and length.isascii() and length.isdigit()):
            raise QRBadHeader(path, f"{tag + length!r} at {position} is not 2 + 2 digits")
        size = int(length)
        if size == 0:
            raise QRBadHeader(path, "a length is 01-99")
        if position + 4 + size > end:
            raise QRLengthOverflow(path, f"length {size} at {position} runs past the end")
        if tag in fields:
            raise QRDuplicateTag(path, "appears twice")
        fields[tag] = text[position + 4 : position + 4 + size]
        position += 4 + size
    return fields


def decode(payload: str) -> ThaiQR:
    """The ``ThaiQR`` of a payload, or the ``QRError`` of the first rule it breaks."""
    assert isinstance(payload, str), f"a payload is a str: {payload!r}"
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise QRPayloadTooLong("", f"{len(payload)} characters, over 512")
    if not (payload.isascii() and payload.isprintable()):
        raise QRBadCharacter("", "only printable ASCII (0x20-0x7E) is allowed")
    fields = _parse(payload, "")
    if _TAG_CRC not in fields:
        raise QRMissingField(_TAG_CRC, "no CRC")
    if next(reversed(fields)) != _TAG_CRC:
        raise QRCRCNotLast(_TAG_CRC, "the CRC is not the last data object")
    crc = fields.pop(_TAG_CRC)
    if not _CRC.fullmatch(crc) or crc != crc16(payload[:-4]):
        raise QRBadCRC(_TAG_CRC, f"{crc!r} is not the CRC of the payload")

    if _TAG_FORMAT not in fields:
        raise QRMissingField(_TAG_FORMAT, "no payload format indicator")
    if next(iter(fields)) != _TAG_FORMAT:
        raise QRBadField(_TAG_FORMAT, "the payload format indicator comes first")
    if fields.pop(_TAG_FORMAT) != "01":
        raise QRBadField(_TAG_FORMAT, "the payload format indicator is 01")
    for tag in (_TAG_POINT_OF_INITIATION, _TAG_CURRENCY, _TAG_COUNTRY):
        if tag not in fields:
            raise QRMissingField(tag, "missing")
    try:
        point_of_initiation = PointOfInitiation(fields.pop(_TAG_POINT_OF_INITIATION))
    except ValueError:
        raise QRBadPointOfInitiation(_TAG_POINT_OF_INITIATION, "neither 11 nor 12") from None

    amount_text = fields.pop(_TAG_AMOUNT, None)
    additional_text = fields.pop(_TAG_ADDITIONAL_DATA, None)
    qr = ThaiQR(
        point_of_initiation=point_of_initiation,
        merchant_account=_decode_account(fields),
        amount_satang=None if amount_text is None else _decode_amount(amount_text),
        currency=fields.pop(_TAG_CURRENCY),
        country=fields.pop(_TAG_COUNTRY),
        merchant_name=fields.pop(_TAG_MERCHANT_NAME, None),
        merchant_city=fields.pop(_TAG_MERCHANT_CITY, None),
        additional_data=(
            None if additional_text is None else _decode_additional_data(additional_text)
        ),
        other_fields=tuple(sorted(fields.items())),
    )
    check(qr)
    return qr


def _decode_amount(text: str) -> int:
    match = _AMOUNT.fullmatch(text)
    if match is None:
        raise QRBadAmount(_TAG_AMOUNT, f"{text!r} is not 1-10 digits with 0 or 2 decimals")
    baht, satang = match.groups()
    return int(baht) * 100 + int(satang or "0")


def _decode_account(fields: dict[str, str]) -> BillPayment | CreditTransfer:
    """Pop the PromptPay template (29 or 30) from ``fields``."""
    present = [tag for tag in (_TAG_CREDIT_TRANSFER, _TAG_BILL_PAYMENT) if tag in fields]
    if not present:
        raise QRMissingField(_TAG_BILL_PAYMENT, "no PromptPay merchant account (29 or 30)")
    if len(present) == 2:
        raise QRBadField(_TAG_CREDIT_TRANSFER, "a payload has one PromptPay account, not 29 and 30")
    tag = present[0]
    sub = _parse(fields.pop(tag), tag)
    aid = sub.pop("00", None)
    if aid is None:
        raise QRMissingField(f"{tag}.00", "no application identifier")
    if tag == _TAG_CREDIT_TRANSFER:
        if aid != AID_CREDIT_TRANSFER:
            raise QRBadField(f"{tag}.00", f"{aid!r} is not {AID_CREDIT_TRANSFER}")
        unknown = sorted(set(sub) - {kind.value for kind in ProxyKind})
        if unknown:
            raise QRBadField(f"{tag}.{unknown[0]}", "not a PromptPay proxy sub-tag")
        if not sub:
            raise QRMissingField(f"{tag}.01", "no proxy id (01, 02 or 03)")
        if len(sub) > 1:
            raise QRBadField(tag, "a credit transfer has exactly one proxy id")
        [(kind, proxy)] = sub.items()
        return CreditTransfer(proxy_kind=ProxyKind(kind), proxy_id=proxy)
    if aid != AID_BILL_PAYMENT:
        raise QRBadField(f"{tag}.00", f"{aid!r} is not {AID_BILL_PAYMENT}")
    unknown = sorted(set(sub) - {"01", "02", "03"})
    if unknown:
        raise QRBadField(f"{tag}.{unknown[0]}", "not a PromptPay bill payment sub-tag")
    for required in ("01", "02"):
        if required not in sub:
            raise QRMissingField(f"{tag}.{required}", "missing")
    return BillPayment(biller_id=sub["01"], reference_1=sub["02"], reference_2=sub.get("03"))


def _decode_additional_data(text: str) -> AdditionalData:
    sub = _parse(text, _TAG_ADDITIONAL_DATA)
    named = {name: sub.pop(tag) for tag, name in _ADDITIONAL_DATA_TAGS.items() if tag in sub}
    return AdditionalData(**named, other_fields=tuple(sorted(sub.items())))
