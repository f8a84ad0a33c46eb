"""Authenticator-app codes (TOTP, RFC 6238) for citizens and officials.

pyotp generates secrets, provisioning URIs and codes; the checking rules are ours:

- a code is exactly six ASCII digits (pyotp, like ``int()``, would accept Thai or full-width
  digits: refused here first);
- the current time step and one step either side are tolerated;
- every comparison is constant-time (``hmac.compare_digest``) and all three steps are always
  compared, so timing says nothing about which step matched;
- a code is accepted once only: ``matching_step`` returns the step it matched, and the
  caller stores it with ``accept_step_sql`` semantics, i.e. an atomic
  ``UPDATE ... SET totp_last_step = $step WHERE ... AND totp_last_step < $step``; a replay
  (same or older step) updates nothing and is refused.
"""

from __future__ import annotations

import hmac
from datetime import datetime

import pyotp

from gwallet.qrsvg import qr_svg as draw_qr_svg

DIGITS = 6
INTERVAL_SECONDS = 30
TOLERANCE_STEPS = 1
_ASCII_DIGITS = frozenset("0123456789")


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, account_name: str, issuer: str = "G-Wallet") -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL_SECONDS).provisioning_uri(
        name=account_name, issuer_name=issuer
    )


def qr_svg(uri: str) -> str:
    """The provisioning URI as an SVG QR code, for the app to show (``gwallet.qrsvg``: a
    fixed mask pattern, which was 80 % of a registration's QR cost)."""
    return draw_qr_svg(uri, error="m")


def is_wellformed(code: object) -> bool:
    return isinstance(code, str) and len(code) == DIGITS and set(code) <= _ASCII_DIGITS


def step_at(moment: datetime) -> int:
    return int(moment.timestamp()) // INTERVAL_SECONDS


def code_at_step(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL_SECONDS).generate_otp(step)


def matching_step(secret: str, code: object, now: datetime) -> int | None:
    """The time step (within ±1 of now) whose code equals ``code``, or None."""
    if not is_wellformed(code):
        return None
    assert isinstance(code, str)
    current = step_at(now)
    matched: int | None = None
    for step in range(current - TOLERANCE_STEPS, current + TOLERANCE_STEPS + 1):
        if hmac.compare_digest(code_at_step(secret, step), code) and matched is None:
            matched = step
    return matched
