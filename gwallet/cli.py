"""The ``gwallet`` command.

    gwallet serve [--host H] [--port P] [--workers N] [--server granian|uvicorn]
    gwallet migrate
    gwallet demo [--serve ...]
    gwallet ledger verify
    gwallet bank topup --wallet-id wal_... --amount SATANG [--bank-reference R] [--url URL]
    gwallet citizens rekey
    gwallet admin create --username U --role admin|maker|checker|auditor [--password-stdin]
    gwallet settlement run --date YYYY-MM-DD

Settings come from ``GWALLET_*`` environment variables (README); the options above override
their namesakes. Without ``GWALLET_DATABASE_URL``/``GWALLET_REDIS_URL`` the embedded servers are
started here, once, and their URLs handed to the workers through the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from gwallet import logs
from gwallet.settings import Settings, SettingsError

APP_FACTORY = "gwallet.app:app_factory"
SERVERS = ("granian", "uvicorn")
_log = logging.getLogger("gwallet.cli")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(**_overrides(args))
    except SettingsError as exc:
        print(f"gwallet: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    return int(args.run(args, settings) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gwallet", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="command")

    serve = commands.add_parser("serve", help="run the HTTP service")
    _serve_options(serve)
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(run=_migrate)

    demo = commands.add_parser("demo", help="seed demo data and print how to try the service")
    demo.add_argument("--serve", action="store_true", help="then run the service")
    _serve_options(demo)
    demo.set_defaults(run=_demo)

    ledger = commands.add_parser("ledger", help="ledger administration")
    ledger_commands = ledger.add_subparsers(required=True, metavar="command")
    verify = ledger_commands.add_parser("verify", help="check every ledger invariant and the chain")
    verify.set_defaults(run=_verify)

    # Officials (issue 3): the first admin is created here.
    admin = commands.add_parser("admin", help="back-office officials")
    admin_commands = admin.add_subparsers(required=True, metavar="command")
    create = admin_commands.add_parser(
        "create", help="create an official; prints the password (once) and the TOTP secret"
    )
    create.add_argument("--username", required=True)
    create.add_argument("--role", required=True, choices=("admin", "maker", "checker", "auditor"))
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (one line)"
    )
    create.set_defaults(run=_admin_create)

    # Citizens (issue 4): a bank partner's top-up, signed, posted to a running service.
    bank = commands.add_parser("bank", help="simulate a bank partner")
    bank_commands = bank.add_subparsers(required=True, metavar="command")
    topup = bank_commands.add_parser("topup", help="sign and post a top-up (Standard Webhooks)")
    topup.add_argument("--wallet-id", required=True, help="the citizen's wallet (wal_...)")
    topup.add_argument("--amount", required=True, help="satang, ASCII digits (12350 = 123.50 THB)")
    topup.add_argument("--bank-reference", help="idempotency: the same reference is one top-up")
    topup.add_argument("--partner", help="bank partner id (default: the first configured)")
    topup.add_argument("--url", help="the service (default: http://GWALLET_HOST:GWALLET_PORT)")
    topup.set_defaults(run=_bank_topup)
    citizens = commands.add_parser("citizens", help="citizens' personal data")
    citizens_commands = citizens.add_subparsers(required=True, metavar="command")
    rekey = citizens_commands.add_parser(
        "rekey", help="re-encrypt personal data and lookup digests under the current keys"
    )
    rekey.set_defaults(run=_citizens_rekey)

    # Settlement (issue 5): cron it at the two leg times; each run pays what is due by then.
    settlement = commands.add_parser("settlement", help="T+1 settlement of merchants")
    settlement_commands = settlement.add_subparsers(required=True, metavar="command")
    settle = settlement_commands.add_parser(
        "run", help="build the settlement of a business date (once) and pay its due legs"
    )
    settle.add_argument("--date", required=True, help="the business date, YYYY-MM-DD")
    settle.set_defaults(run=_settlement_run)
    return parser


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (GWALLET_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (GWALLET_PORT)")
    parser.add_argument("--workers", type=int, help="worker processes (GWALLET_WORKERS)")
    parser.add_argument("--server", choices=SERVERS, help="ASGI server (GWALLET_SERVER)")


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    names = ("host", "port", "workers", "server")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


# --- backing services ------------------------------------------------------------------


def with_backing_services(settings: Settings) -> Settings:
    """Start the embedded servers the settings ask for (no URL given), once, in this process.

    Their URLs go into this process's environment, which worker processes inherit, so every
    worker uses the same servers instead of racing to start its own.
    """
    from gwallet.embedded import start_postgres, start_redis

    changes: dict[str, str] = {}
    if settings.database_url is None:
        changes["database_url"] = start_postgres(settings.data_path)
        _log.warning(
            "no GWALLET_DATABASE_URL: using the embedded PostgreSQL in %s", settings.data_path
        )
    if settings.redis_url is None:
        changes["redis_url"] = start_redis(settings.data_path)
        _log.warning("no GWALLET_REDIS_URL: using the embedded Redis in %s", settings.data_path)
    for name, value in changes.items():
        os.environ["GWALLET_" + name.upper()] = value
    return msgspec.structs.replace(settings, **changes)


def _prepare_for_workers(settings: Settings) -> Settings:
    """Everything that must happen once, before worker processes start."""
    from gwallet.keys import load_signing_key
    from gwallet.migrate import migrate

    settings = with_backing_services(settings)
    assert settings.database_url is not None
    asyncio.run(migrate(settings.database_url))
    load_signing_key(settings)  # a development key is created here, not by racing workers
    return settings


# --- commands --------------------------------------------------------------------------


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    settings = _prepare_for_workers(settings)
    return serve(settings)


def serve(settings: Settings) -> int:
    if settings.server not in SERVERS:
        print(f"gwallet: GWALLET_SERVER must be one of {', '.join(SERVERS)}", file=sys.stderr)
        return 2
    if not 1 <= settings.workers <= 64:
        print("gwallet: workers must be 1..64", file=sys.stderr)
        return 2
    if settings.workers > 1:
        _prepare_multiprocess_metrics(settings.data_path / "prometheus")
    _log.info(
        "serving",
        extra={
            "host": settings.host,
            "port": settings.port,
            "workers": settings.workers,
            "server": settings.server,
        },
    )
    if settings.server == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        Granian(
            APP_FACTORY,
            factory=True,
            address=settings.host,
            port=settings.port,
            interface=Interfaces.ASGI,
            workers=settings.workers,
            websockets=False,
            # Granian's own log records go to the root logger, i.e. our JSON lines.
            log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}},
            log_access=False,  # gwallet.access logs each request with its route template
        ).serve()
    else:
        import uvicorn

        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            lifespan="on",
            log_config=None,  # gwallet.logs configures logging
            access_log=False,
            timeout_graceful_shutdown=int(settings.request_timeout_seconds) + 5,
        )
    return 0


def _prepare_multiprocess_metrics(folder: Path) -> None:
    """Point prometheus-client at an emptied folder before any worker imports it.

    (This process must not import prometheus-client itself before this: gwallet.metrics.)
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # values of a previous run must not be added up
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from gwallet.migrate import migrate

    settings = with_backing_services(settings)
    assert settings.database_url is not None
    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied migrations: {applied}" if applied else "database is up to date")
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from gwallet.demo import print_instructions, seed

    settings = _prepare_for_workers(settings)
    report = asyncio.run(seed(settings))
    print_instructions(settings, report, serving=args.serve)
    if args.serve:
        return serve(settings)
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    settings = with_backing_services(settings)
    report = asyncio.run(_run_verify(settings))
    print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
    return 0 if report.ok else 1


async def _run_verify(settings: Settings):  # type: ignore[no-untyped-def]
    import asyncpg

    from gwallet.keys import load_signing_key
    from ledger_core.verify import verify_ledger

    public_key = load_signing_key(settings).public_key()
    conn = await asyncpg.connect(settings.database_url, timeout=settings.db_connect_timeout_seconds)
    try:
        return await verify_ledger(conn, public_key)
    finally:
        await conn.close()


def _admin_create(args: argparse.Namespace, settings: Settings) -> int:
    """``gwallet admin create``: an official, audited as made by "cli"."""
    import re

    from gwallet.migrate import migrate
    from gwallet.officials import USERNAME_PATTERN, Role, UsernameTaken, check_password_policy

    if not re.fullmatch(USERNAME_PATTERN, args.username):
        print("gwallet: a username is 3-64 of a-z 0-9 . _ - and starts with a letter",
              file=sys.stderr)
        return 2
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        try:
            check_password_policy(password)
        except ValueError as exc:
            print(f"gwallet: {exc}", file=sys.stderr)
            return 2
    settings = with_backing_services(settings)
    assert settings.database_url is not None
    asyncio.run(migrate(settings.database_url))
    try:
        created = asyncio.run(_create_official(settings, args.username, Role(args.role), password))
    except UsernameTaken:
        print(f"gwallet: an official named {args.username!r} exists", file=sys.stderr)
        return 1
    print(f"official {created.official.official_id}: {created.official.username} "
          f"({created.official.role})")
    if created.password is not None:
        print(f"password (shown once, store it now): {created.password}")
    print(f"TOTP secret: {created.totp_secret}")
    print(f"TOTP provisioning URI: {created.totp_provisioning_uri}")
    return 0


async def _create_official(settings: Settings, username: str, role, password):  # type: ignore[no-untyped-def]
    import asyncpg

    from gwallet.officials import create_official

    conn = await asyncpg.connect(settings.database_url, timeout=settings.db_connect_timeout_seconds)
    try:
        async with conn.transaction():
            return await create_official(
                conn, username=username, role=role, password=password, created_by=None
            )
    finally:
        await conn.close()


def _citizens_rekey(args: argparse.Namespace, settings: Settings) -> int:
    """``gwallet citizens rekey`` (issue 4): after a new key is put first (docs/SECURITY.md)."""
    from gwallet.migrate import migrate
    from wallet.context import build_context
    from wallet.identity import rekey_citizens

    settings = with_backing_services(settings)
    assert settings.database_url is not None
    asyncio.run(migrate(settings.database_url))
    keys = build_context(settings).keys

    async def run() -> int:
        import asyncpg

        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            return await rekey_citizens(pool, keys)
        finally:
            await pool.close()

    print(f"citizens rekeyed: {asyncio.run(run())}")
    return 0


def _settlement_run(args: argparse.Namespace, settings: Settings) -> int:
    """``gwallet settlement run --date D`` (issue 5): prints the run as JSON; exit 1 on a
    refusal (not a business day, not over, another settlement action running)."""
    from datetime import date

    from gwallet.migrate import migrate
    from gwallet.problems import DomainError

    try:
        business_date = date.fromisoformat(args.date)
    except ValueError:
        print("gwallet: --date is a date, YYYY-MM-DD", file=sys.stderr)
        return 2
    settings = with_backing_services(settings)
    assert settings.database_url is not None
    asyncio.run(migrate(settings.database_url))
    try:
        run = asyncio.run(_run_settlement(settings, business_date))
    except DomainError as exc:
        print(f"gwallet: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    print(msgspec.json.format(msgspec.json.encode(run), indent=2).decode())
    return 0


async def _run_settlement(settings: Settings, business_date):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    import asyncpg

    from gwallet.app import _engine_config
    from gwallet.keys import load_signing_key
    from ledger_core import LedgerEngine
    from merchant_api.settlement import Settler, config_of, run_settlement
    from wallet.context import build_context

    config = config_of(settings)
    pii = build_context(settings).keys.pii
    pool = await asyncpg.create_pool(
        settings.database_url, min_size=1, max_size=4,
        command_timeout=settings.db_command_timeout_seconds,
        timeout=settings.db_connect_timeout_seconds,
    )
    assert pool is not None
    try:
        engine = LedgerEngine(pool, _engine_config(settings), load_signing_key(settings))
        await engine.start()
        try:
            outcome = await run_settlement(
                Settler(pool=pool, engine=engine, pii=pii, config=config),
                business_date, datetime.now(UTC), None)
        finally:
            await engine.stop()
    finally:
        await pool.close()
    return outcome.run


def _bank_topup(args: argparse.Namespace, settings: Settings) -> int:
    """``gwallet bank topup`` (issue 4): prints the service's answer; exit 1 unless 201."""
    from wallet.topups import BankPartnerConfigError, load_bank_partners, post_signed_topup

    if not args.amount.isascii() or not args.amount.isdigit():
        print("gwallet: --amount is a whole number of satang in ASCII digits", file=sys.stderr)
        return 2
    try:
        partners = load_bank_partners(settings.bank_partner_secrets, settings.data_path)
    except BankPartnerConfigError as exc:
        print(f"gwallet: {exc}", file=sys.stderr)
        return 2
    partner = args.partner or partners.partner_ids[0]
    if partner not in partners.partner_ids:
        print(f"gwallet: unknown bank partner {partner!r}", file=sys.stderr)
        return 2
    status, body = post_signed_topup(
        args.url or f"http://{settings.host}:{settings.port}",
        partners.secret_of(partner),
        wallet_id=args.wallet_id,
        amount=int(args.amount),
        bank_reference=args.bank_reference,
    )
    print(body)
    return 0 if status == 201 else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
