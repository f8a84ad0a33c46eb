"""The lean QR SVG writer draws exactly what segno's own writer draws, faster."""

from __future__ import annotations

import segno
from hypothesis import given, settings
from hypothesis import strategies as st

from gwallet.qrsvg import MASK, draw_svg, qr_svg
from merchant_api.payment_requests import qr_svg as payment_request_qr_svg


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=400), error=st.sampled_from("lmqh"))
def test_the_svg_is_segnos_own_byte_for_byte(text: str, error: str) -> None:
    code = segno.make(text, error=error, micro=False, mask=MASK)
    assert draw_svg(code.matrix) == code.svg_inline(scale=4)


def test_a_payment_request_qr_is_a_regular_qr_code_with_the_fixed_mask() -> None:
    payload = ("00020101021230830016A000000677010112011501075360001028602150000000000000000"
               "318PREQ01M910HBHWFP0BX5204599953037645406120.005802TH5920Some Merchant"
               "6007BANGKOK6304ABCD")
    code = segno.make(payload, error="m", micro=False, mask=MASK)
    assert not code.is_micro and code.mask == MASK
    assert payment_request_qr_svg(payload) == code.svg_inline(scale=4)
    assert qr_svg(payload) == code.svg_inline(scale=4)


def test_rows_that_end_dark_and_empty_rows_are_drawn() -> None:
    matrix = [bytearray([1, 1, 0, 1]), bytearray([0, 0, 0, 0]), bytearray([1, 0, 1, 1])]
    assert draw_svg(matrix) == (
        '<svg width="44" height="44" class="segno"><path transform="scale(4)" class="qrline"'
        ' stroke="#000" d="M4 4.5h2m1 0h1m-4 2h1m1 0h2"/></svg>')
