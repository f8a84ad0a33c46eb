"""Settings: every knob of the service, read once from environment variables.

Each field maps to ``GWALLET_<FIELD NAME IN CAPITALS>``. The README lists them all.
``Settings.from_env()`` is the only place the environment is read; everything else
receives a ``Settings`` value (tests build one directly, so nothing is monkeypatched).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec


class SettingsError(ValueError):
    """An environment variable could not be turned into a setting."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Where the data lives. None means: start the embedded server with data in data_dir.
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: str = ".gwallet-data"

    # HTTP serving.
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    server: str = "granian"  # granian | uvicorn, chosen by measurement (BENCHMARKS.md)
    max_request_body_bytes: int = 64 * 1024
    page_limit_max: int = 100
    request_timeout_seconds: float = 10.0
    # /readyz gives each dependency this long to answer.
    readiness_timeout_seconds: float = 1.0

    # PostgreSQL pool.
    db_pool_min_size: int = 2
    db_pool_max_size: int = 10
    db_command_timeout_seconds: float = 5.0
    db_connect_timeout_seconds: float = 5.0
    # A request's wait for a pooled connection (503 database_busy past it; admission.py).
    db_pool_acquire_timeout_seconds: float = 1.0

    # Admission control (gwallet/admission.py), per worker process. 0: no limit.
    admission_max_in_flight: int = 32
    admission_queue_max: int = 128
    admission_queue_timeout_ms: float = 500.0
    # A queue not empty for the interval is a standing queue: waits are cut to this.
    admission_overload_queue_timeout_ms: float = 10.0
    admission_overload_interval_ms: float = 100.0
    admission_retry_after_seconds: int = 1

    # Redis.
    redis_timeout_seconds: float = 0.5
    redis_max_connections: int = 50

    # Ledger batching engine.
    ledger_batch_window_ms: float = 2.0
    ledger_batch_max_transfers: int = 2000
    ledger_batch_concurrency: int = 2
    ledger_queue_max_transfers: int = 50_000
    ledger_batch_retry_max: int = 5
    ledger_checkpoint_every_batches: int = 1000
    ledger_expiry_interval_seconds: float = 1.0
    ledger_shared_accounts_primed_max: int = 1_000_000
    # Ed25519 private key, 32 raw bytes as hex, that signs the hash-chain checkpoints.
    # None: a key is made once and kept in data_dir (development only; README says so).
    ledger_signing_key_hex: str | None = None

    # Idempotency keys are kept at least this long.
    idempotency_retention_hours: int = 48
    idempotency_lock_seconds: float = 30.0
    # How often each process deletes keys older than the retention.
    idempotency_purge_interval_seconds: float = 3600.0

    # Citizens (issue 4). Key lists are "id:hex,id:hex" (32-byte keys, the first one writes,
    # every one reads); None: development keys made once in data_dir (gwallet/pii.py).
    pii_encryption_keys: str | None = None  # AES-256-GCM of national ID, phone, name, TOTP
    pii_lookup_keys: str | None = None  # HMAC-SHA256 lookup index of national IDs
    pin_pepper_keys: str | None = None  # HMAC-SHA256 pepper of PINs (docs/SECURITY.md)
    # "partner_id:whsec_...,..." (Standard Webhooks secrets); None: a development partner.
    bank_partner_secrets: str | None = None
    citizen_session_ttl_seconds: int = 12 * 3600
    citizen_sessions_max: int = 10  # active sessions per citizen; a new one ends the oldest
    auth_lockout_failures: int = 10  # consecutive PIN/TOTP failures that lock an account
    auth_lockout_seconds: int = 1800
    bank_webhook_id_retention_seconds: int = 900  # > the 300 s timestamp tolerance
    enrolment_full_flag_seconds: float = 5.0  # Redis "program full" answer lives this long

    # Officials (issue 3)
    # A back-office session (ost_ token) lasts this long.
    official_session_ttl_seconds: int = 8 * 3600
    # This many failed logins in a row lock the official's account for the lockout time.
    official_login_max_failures: int = 10
    official_lockout_minutes: int = 30

    # Merchants (issue 5)
    # After a rotation the previous API key keeps working this long (not named *key*: it
    # is no secret, and redacted() blanks such names).
    merchant_rotation_grace_seconds: int = 24 * 3600
    # Per-API-key token bucket in Redis: this many requests per second, bursts up to burst.
    merchant_rate_limit_per_second: float = 100.0
    merchant_rate_limit_burst: int = 200
    # A payment request (dynamic QR) can be paid for this long.
    payment_request_ttl_seconds: int = 300

    # Webhooks (issue 5): merchant_api/webhooks.py.
    # Merchants delivered to at once by this process's worker; 0: this process delivers none.
    webhook_delivery_concurrency: int = 8
    webhook_poll_interval_seconds: float = 1.0  # how often the worker looks for due events
    webhook_timeout_seconds: float = 10.0  # one attempt, name resolution included
    # A worker that dies mid-delivery holds the merchant this long; then another resends.
    webhook_lease_seconds: float = 60.0
    # Backoff with full jitter: uniform(0, min(max_delay, base * 2^(attempt-1))).
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_max_delay_seconds: float = 3600.0
    # An event is retried at least this long after its first attempt, then given up.
    webhook_retry_window_seconds: float = 86400.0
    # Events given up in a row that disable the endpoint (a PUT re-enables it).
    webhook_disable_after_failed_events: int = 1
    webhook_allow_http: bool = False  # development and tests only
    webhook_allow_private_addresses: bool = False  # development and tests only (loopback)

    # Settlement (issue 5): merchant_api/settlement.py.
    # Public holidays, "YYYY-MM-DD,YYYY-MM-DD,..." (Bangkok dates): not business days.
    settlement_holidays: str = ""
    # Bangkok times of the settlement day from which the citizen and state legs are paid.
    settlement_citizen_leg_time: str = "02:00"
    settlement_state_leg_time: str = "17:30"
    # Merchants whose legs one run queues on the ledger at once.
    settlement_submissions_in_flight: int = 100

    # Python's cyclic garbage collector (gwallet/runtime.py): generation 0 is collected
    # every this many net allocations (CPython's default is 700); 0 keeps the defaults.
    gc_gen0_threshold: int = 50_000

    # Logging.
    log_level: str = "INFO"
    log_json: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``GWALLET_*`` variables; keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, default in _defaults().items():
            raw = env.get("GWALLET_" + name.upper())
            if raw is None or raw == "":
                continue
            values[name] = _parse(name, raw, default)
        values.update(overrides)
        try:
            return msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            raise SettingsError(str(exc)) from exc

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def redacted(self) -> dict[str, Any]:
        """The settings with secrets and credentials blanked, safe to log."""
        out = msgspec.structs.asdict(self)
        for name in out:
            if any(word in name for word in ("key", "secret", "password")) and out[name]:
                out[name] = "***"
        for name in ("database_url", "redis_url"):
            if out[name]:
                out[name] = _redact_url(out[name])
        return out


def _defaults() -> dict[str, Any]:
    return {
        f.name: f.default
        for f in msgspec.structs.fields(Settings)
    }


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"GWALLET_{name.upper()} must be true or false, not {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw, 10)
        except ValueError:
            raise SettingsError(f"GWALLET_{name.upper()} must be an integer") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"GWALLET_{name.upper()} must be a number") from None
    return raw


def _redact_url(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"
