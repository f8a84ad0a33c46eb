"""The seeded population: who citizen i and merchant j are, derived from one secret.

The seeding command (``loadtests.seed``) writes N citizens and M merchants straight into the
database; the load generator (``loadtests.locustfile``) must then act as any of them at random
without a million-line credentials file. Both derive every credential from the run's secret and
the index, so a Locust process needs only the manifest (the secret, N, M and the program).

Only for load tests against a seeded database: the tokens and keys are derivable by whoever
holds the manifest's secret. The service itself never derives credentials: it stores only
their SHA-256 (sessions, API keys) or peppered HMAC (PINs), as for real ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from wallet.auth import weak_pins

_WEAK = weak_pins()
_NAMESPACE = uuid.UUID("6a1f3c52-9d7e-4b0a-8e21-5f0c2b7d9a13")


def _mac(secret: str, label: str) -> bytes:
    return hmac.new(secret.encode(), label.encode(), hashlib.sha256).digest()


def _token(secret: str, label: str) -> str:
    """43 URL-safe base64 characters (256 bits), the form of the service's own tokens."""
    return base64.urlsafe_b64encode(_mac(secret, label)).decode().rstrip("=")


def national_id(i: int) -> str:
    """Citizen i's 13-digit national ID, with its mod-11 check digit (wallet/identity.py)."""
    body = f"8{i:011d}"  # class 8: people naturalised or registered after 1984
    total = sum(int(d) * (13 - k) for k, d in enumerate(body))
    return body + str((11 - total % 11) % 10)


def citizen_id(secret: str, i: int) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{secret}:citizen:{i}")


def wallet_account_id(secret: str, i: int) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{secret}:wallet:{i}")


def citizen_session_token(secret: str, i: int) -> str:
    return "cst_" + _token(secret, f"session:{i}")


def citizen_pin(secret: str, i: int) -> str:
    """A six-digit PIN that is not one of the weak ones (no run, repeat or pattern)."""
    n = int.from_bytes(_mac(secret, f"pin:{i}")[:8], "big")
    pin = f"{n % 1_000_000:06d}"
    return pin if pin not in _WEAK else "583920"


def merchant_id(secret: str, j: int) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{secret}:merchant:{j}")


def merchant_api_key(secret: str, j: int) -> str:
    return "sk_live_" + _token(secret, f"merchant-key:{j}")


def citizen_totp_secret(secret: str, i: int) -> str:
    """Citizen i's authenticator secret: 32 base32 characters (160 bits), the form of
    ``gwallet.totp.new_secret``; seeded as confirmed, so citizen i can also log in
    (``POST /v1/citizen/sessions`` with national ID, PIN and a code of this secret)."""
    return base64.b32encode(_mac(secret, f"totp:{i}")[:20]).decode()


OFFICIAL_ROLES = ("admin", "maker", "checker")  # the officials the seed creates its program with


def official_username(secret: str, role: str) -> str:
    """The seed's back-office official of ``role`` (admin, maker, checker)."""
    return f"loadtest-{role}-{_mac(secret, 'officials').hex()[:8]}"


def official_password(secret: str, role: str) -> str:
    """Its password (43 characters). Its TOTP secret is the service's own (random, in
    ``officials.totp_secret``), read by whoever holds the database URL."""
    return _token(secret, f"official-password:{role}")


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a seeded database holds, for the load generator and the invariant checks."""

    secret: str
    citizens: int
    merchants: int
    enrolled: int  # citizens 0 .. enrolled-1 are enrolled in the program
    program_id: str  # prg_...
    database_url: str
    top_up: int  # satang each citizen was topped up with

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls(**json.loads(path.read_text()))
