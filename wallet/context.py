"""The wallet's resources, built once from settings: keys, bank partners, limits, clock.

``wallet_lifespan(settings)`` is added to the app's lifespans by the composition root
(``gwallet.app``), after the one that opens the pool: it builds the ``WalletContext`` into
``app.state.wallet``, makes sure every bank partner's clearing account exists, and runs the
wallet's housekeeping (releasing forfeited enrolments, purging old webhook ids and sessions)
until shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from litestar import Litestar
from redis.asyncio import Redis

from gwallet.pii import LookupIndex, PiiCipher, load_keyring
from gwallet.settings import Settings
from ledger_core import CreateAccountResult, create_accounts
from wallet.accounts import bank_clearing_account
from wallet.auth import Credentials, LockoutPolicy, PinHasher, attempt
from wallet.auth import Q as CITIZEN_QUERIES
from wallet.enrolment import release_all_forfeited
from wallet.identity import IdentityKeys
from wallet.topups import BankPartners, load_bank_partners, purge_webhook_ids

_log = logging.getLogger("gwallet.wallet")

HOUSEKEEPING_INTERVAL_SECONDS = 60.0
SESSION_KEEP_AFTER_END = timedelta(days=7)  # ended sessions stay listed for support this long


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class WalletConfig:
    session_ttl_seconds: int = 12 * 3600
    sessions_max: int = 10
    lockout: LockoutPolicy = field(default_factory=LockoutPolicy)
    webhook_id_retention_seconds: int = 900
    full_flag_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class WalletContext:
    keys: IdentityKeys
    partners: BankPartners
    config: WalletConfig
    clock: Callable[[], datetime] = _utc_now

    def payment_pin_matches(self, citizen_id: uuid.UUID, pin: str, row: Any,
                            now: datetime) -> bool:
        """The payment path's PIN check without a lock or a transaction, for the usual case:
        True only when the PIN matches under the current pepper and the row (as just read:
        ``pin_key_id``, ``pin_hash``, ``failed_attempts``, ``locked_until``) shows no failure
        to reset and no lock. Then ``verify_payment_pin`` would change nothing, so skipping
        it saves a locking transaction and its durable commit on every payment. Anything
        else (a wrong PIN, earlier failures, a lock, an old pepper) goes through
        ``verify_payment_pin``, which counts and locks exactly as before. A wrong attempt
        racing this read can only be ordered after this payment, as if it came a moment later.
        """
        if row["failed_attempts"] or (row["locked_until"] is not None
                                      and row["locked_until"] > now):
            return False
        pins = self.keys.pins
        return row["pin_key_id"] == pins.peppers.current and pins.matches(
            citizen_id, pin, row["pin_key_id"], bytes(row["pin_hash"]))

    async def verify_payment_pin(
        self, conn: asyncpg.Connection, citizen_id: uuid.UUID, pin: str
    ) -> bool:
        """The PIN check of the payment path: True if right; False (counted) if wrong.

        Raises ``wallet.auth.AccountLocked`` (429) while the account is locked. The
        failure count commits on its own, so call it outside the payment's transaction
        (``conn`` must not be in one): a wrong PIN must count even though the payment
        then rolls back. Costs one HMAC and a ``SELECT ... FOR UPDATE`` (plus an UPDATE
        only after earlier failures or to re-hash under a new pepper).
        """
        result = await attempt(
            conn,
            citizen_id=citizen_id,
            credentials=Credentials(pin=pin),
            pins=self.keys.pins,
            pii=self.keys.pii,
            policy=self.config.lockout,
            now=self.clock(),
        )
        return result.ok


class WalletSettingsError(ValueError):
    """A citizens' setting is out of its range."""


def build_context(settings: Settings) -> WalletContext:
    data = settings.data_path
    for name, value, low, high in (
        ("citizen_session_ttl_seconds", settings.citizen_session_ttl_seconds, 60, 30 * 86400),
        ("citizen_sessions_max", settings.citizen_sessions_max, 1, 100),
        ("auth_lockout_failures", settings.auth_lockout_failures, 1, 100),
        ("auth_lockout_seconds", settings.auth_lockout_seconds, 1, 7 * 86400),
        ("bank_webhook_id_retention_seconds", settings.bank_webhook_id_retention_seconds, 360, 86400 * 30),
        ("enrolment_full_flag_seconds", settings.enrolment_full_flag_seconds, 0.0, 3600.0),
    ):
        if not low <= value <= high:
            raise WalletSettingsError(f"GWALLET_{name.upper()} must be within {low}..{high}")
    keys = IdentityKeys(
        pii=PiiCipher(
            load_keyring(
                settings.pii_encryption_keys, data, "pii-encryption-keys.txt",
                "GWALLET_PII_ENCRYPTION_KEYS",
            )
        ),
        lookup=LookupIndex(
            load_keyring(
                settings.pii_lookup_keys, data, "pii-lookup-keys.txt", "GWALLET_PII_LOOKUP_KEYS"
            )
        ),
        pins=PinHasher(
            load_keyring(
                settings.pin_pepper_keys, data, "pin-pepper-keys.txt", "GWALLET_PIN_PEPPER_KEYS"
            )
        ),
    )
    if set(keys.pii.keyring.keys.values()) & set(keys.lookup.keyring.keys.values()):
        raise WalletSettingsError("the lookup keys must differ from the encryption keys")
    return WalletContext(
        keys=keys,
        partners=load_bank_partners(settings.bank_partner_secrets, data),
        config=WalletConfig(
            session_ttl_seconds=settings.citizen_session_ttl_seconds,
            sessions_max=settings.citizen_sessions_max,
            lockout=LockoutPolicy(
                failures=settings.auth_lockout_failures,
                lock_seconds=settings.auth_lockout_seconds,
            ),
            webhook_id_retention_seconds=settings.bank_webhook_id_retention_seconds,
            full_flag_seconds=settings.enrolment_full_flag_seconds,
        ),
    )


async def ensure_clearing_accounts(pool: asyncpg.Pool, partners: BankPartners) -> None:
    accounts = [bank_clearing_account(p) for p in partners.partner_ids]
    results = await create_accounts(pool, accounts)
    for account, result in zip(accounts, results, strict=True):
        if result not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
            raise RuntimeError(f"bank clearing account {account.id}: {result.name.lower()}")


async def housekeeping(pool: asyncpg.Pool, redis: Redis | None, context: WalletContext) -> None:
    """Every minute: purge old webhook ids and sessions, release forfeited enrolments."""
    now = context.clock()
    await release_all_forfeited(pool, now, redis)
    await purge_webhook_ids(pool, context.config.webhook_id_retention_seconds, now)
    await pool.execute(CITIZEN_QUERIES["purge_sessions"], now - SESSION_KEEP_AFTER_END, 10_000)


def wallet_lifespan(settings: Settings) -> Callable[[Litestar], Any]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        context = build_context(settings)
        pool: asyncpg.Pool = app.state.pool
        await ensure_clearing_accounts(pool, context.partners)
        app.state.wallet = context
        task = asyncio.create_task(
            _every(pool, app.state.redis, context), name="wallet-housekeeping"
        )
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return lifespan


async def _every(pool: asyncpg.Pool, redis: Redis, context: WalletContext) -> None:
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_SECONDS)
        try:
            await housekeeping(pool, redis, context)
        except Exception:  # noqa: BLE001 - a periodic job must survive a bad round
            _log.exception("wallet housekeeping failed")
