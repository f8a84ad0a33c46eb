"""Officials over HTTP: login (password + TOTP, generic 401, lockout, once-only codes),
sessions, the admin guard on every admin endpoint, and ``gwallet admin create``."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from gwallet.app import create_app
from gwallet.ids import parse_id
from gwallet.settings import Settings
from gwallet.totp import code_at_step, step_at
from tests.backoffice import PROGRAMS, Official, key, new_official

SESSIONS = "/v1/admin/sessions"
NOT_AN_OFFICIAL_TOKENS = {
    "citizen": "cst_" + "A" * 43,
    "merchant": "sk_live_" + "b" * 40,
}


def admin_routes() -> list[tuple[str, str, Any]]:
    """(method, path template, handler) of every admin endpoint of the real app."""
    app = create_app(Settings(database_url="postgresql://unused", redis_url="redis://unused"))
    out = []
    for route in app.routes:
        if not route.path.startswith("/v1/admin"):
            continue
        for handler in getattr(route, "route_handlers", ()):
            for method in sorted(handler.http_methods):
                if method not in {"OPTIONS", "HEAD"}:
                    out.append((method, route.path, handler))
    assert len(out) >= 20, out
    return out


# A well-formed id (of nothing) for each kind of path parameter; others get "x".
PATH_PARAMETER_VALUES = {
    "program_id": "prg_" + "0" * 26,
    "funding_id": "fnd_" + "0" * 26,
    "merchant_id": "mer_" + "0" * 26,
    "version": "1",
}


def concrete(path: str, **values: str) -> str:
    """A path template with well-formed ids (of nothing, unless given) in its parameters."""
    given = {**PATH_PARAMETER_VALUES, **values}
    return re.sub(r"\{(\w+):\w+\}", lambda m: given.get(m[1], "x"), path)


async def login(api: httpx.AsyncClient, official: Official, **changes: str) -> httpx.Response:
    body = {"username": official.username, "password": official.password, "totp_code": None}
    body.update(changes)
    if body["totp_code"] is None:
        # A request that must fail anyway does not spend the official's fresh code.
        body["totp_code"] = official.peek() if changes else official.code()
    return await api.post(SESSIONS, json=body)


async def test_an_official_logs_in_with_password_and_totp_and_gets_an_ost_token(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    auditor = await new_official(pool, api, "auditor", login=False)
    response = await login(api, auditor)
    assert response.status_code == 201, response.text
    session = response.json()
    assert re.fullmatch(r"ost_[A-Za-z0-9_-]{43}", session["access_token"])
    assert session["role"] == "auditor" and parse_id("off", session["official_id"])
    stored = await pool.fetchval(
        "SELECT count(*) FROM official_sessions WHERE token_hash = sha256($1::text::bytea)",
        session["access_token"],
    )
    assert stored == 1  # only the hash is stored
    headers = {"Authorization": f"Bearer {session['access_token']}"}
    assert (await api.get("/v1/admin/audit-log?limit=1", headers=headers)).status_code == 200
    assert (await api.delete(f"{SESSIONS}/current", headers=headers)).status_code == 204
    after = await api.get("/v1/admin/audit-log?limit=1", headers=headers)
    assert after.status_code == 401 and after.json()["code"] == "unauthenticated"


async def test_every_login_failure_is_the_same_generic_401(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    maker = await new_official(pool, api, "maker", login=False)
    wrong_password = await login(api, maker, password="not-the-password")
    valid = {maker.peek(), code_at_step(maker.secret, step_at(datetime.now(UTC)) + 1)}
    wrong_code = await login(api, maker, totp_code=min({"000000", "111111", "222222"} - valid))
    unknown = await login(api, maker, username="nobody-" + secrets.token_hex(4))
    thai_digits = await login(api, maker, totp_code="๑๒๓๔๕๖")
    nul_name = await login(api, maker, username=maker.username + "\u0000")
    failures = (wrong_password, wrong_code, unknown, thai_digits, nul_name)
    bodies = [r.json() for r in failures]
    assert {r.status_code for r in failures} == {401}
    assert all(b == bodies[0] for b in bodies), bodies
    assert bodies[0]["code"] == "invalid_credentials"
    assert "password" not in bodies[0]["detail"].lower().replace("password and totp", "")


async def test_a_totp_code_logs_in_once_only(api: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    checker = await new_official(pool, api, "checker", login=False)
    code = checker.code()
    assert (await login(api, checker, totp_code=code)).status_code == 201
    replay = await login(api, checker, totp_code=code)
    assert replay.status_code == 401 and replay.json()["code"] == "invalid_credentials"


async def test_ten_failed_logins_in_a_row_lock_the_account_even_for_the_right_credentials(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    maker = await new_official(pool, api, "maker", login=False)
    for _ in range(9):
        assert (await login(api, maker, password="wrong-password!")).status_code == 401
    official_uuid = parse_id("off", maker.official_id)
    counted = await pool.fetchrow(
        "SELECT failed_logins, locked_until FROM officials WHERE id = $1", official_uuid
    )
    assert counted["failed_logins"] == 9 and counted["locked_until"] is None
    assert (await login(api, maker, password="wrong-password!")).status_code == 401  # the 10th
    locked = await pool.fetchrow(
        "SELECT failed_logins, locked_until, now() AS now FROM officials WHERE id = $1",
        official_uuid,
    )
    minutes = (locked["locked_until"] - locked["now"]).total_seconds() / 60
    assert 29 < minutes <= 30
    right = await login(api, maker)
    assert right.status_code == 401 and right.json()["code"] == "invalid_credentials"
    reasons = await pool.fetch(
        "SELECT after->>'reason' AS reason FROM audit_log WHERE target_id = $1 "
        "AND action = 'official.login_failed' ORDER BY seq",
        maker.official_id,
    )
    assert [r["reason"] for r in reasons] == ["wrong_password"] * 10 + ["locked"]
    # When the lock has passed, the right credentials work again (and reset the count).
    await pool.execute(
        "UPDATE officials SET locked_until = now() - interval '1 second' WHERE id = $1",
        official_uuid,
    )
    assert (await login(api, maker)).status_code == 201


async def test_an_expired_or_unknown_session_token_is_401(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    auditor = await new_official(pool, api, "auditor")
    await pool.execute(
        "UPDATE official_sessions SET created_at = now() - interval '2 days', "
        "expires_at = now() - interval '1 day' WHERE token_hash = sha256($1::text::bytea)",
        auditor.token,
    )
    for headers in (
        auditor.headers,
        {"Authorization": "Bearer ost_" + "x" * 43},
        {"Authorization": "Bearer ost_short"},
        {"Authorization": "Basic b3N0Og=="},
        {},
    ):
        response = await api.get("/v1/admin/audit-log", headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["code"] == "unauthenticated"
        assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("audience", sorted(NOT_AN_OFFICIAL_TOKENS))
async def test_a_citizen_or_merchant_token_gets_403_on_every_admin_endpoint(
    api: httpx.AsyncClient, audience: str
) -> None:
    headers = {"Authorization": f"Bearer {NOT_AN_OFFICIAL_TOKENS[audience]}", **key()}
    for method, path, _ in admin_routes():
        response = await api.request(method, concrete(path), json={}, headers=headers)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["code"] == "forbidden", (method, path)
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_every_admin_endpoint_but_login_needs_a_session_and_an_admitted_role(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    officials = {
        role: await new_official(pool, api, role)
        for role in ("admin", "maker", "checker", "auditor")
    }
    for method, path, handler in admin_routes():
        if (method, path) == ("POST", SESSIONS):
            continue
        anonymous = await api.request(method, concrete(path), json={}, headers=key())
        assert anonymous.status_code == 401, (method, path)
        assert handler.opt.get("roles"), f"{method} {path} declares no roles"
        for role, official in officials.items():
            if role in handler.opt["roles"]:
                continue
            refused = await api.request(
                method, concrete(path), json={}, headers={**official.headers, **key()}
            )
            assert refused.status_code == 403, (method, path, role, refused.text)
            assert refused.json()["code"] == "forbidden"


async def test_only_an_auditor_or_admin_reads_the_audit_log_and_verifies_the_ledger(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    auditor = await new_official(pool, api, "auditor")
    maker = await new_official(pool, api, "maker")
    ledger = await api.get("/v1/admin/ledger/verify", headers=auditor.headers)
    assert ledger.status_code == 200, ledger.text
    report = ledger.json()
    assert report["transfers"] >= 0 and isinstance(report["failures"], list)
    # The session's database is shared with tests that run engines signing checkpoints with
    # keys of their own: against this service's key only those signatures may fail here.
    # (`gwallet ledger verify` after `gwallet demo`, in test_cli, checks a clean ledger: ok.)
    assert report["ok"] or {f["check"] for f in report["failures"]} <= {"checkpoint"}, report
    assert (await api.get("/v1/admin/ledger/verify", headers=maker.headers)).status_code == 403
    assert (await api.get("/v1/admin/audit-log", headers=maker.headers)).status_code == 403


async def test_an_admin_creates_officials_over_http_and_the_password_is_shown_once(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    admin = await new_official(pool, api, "admin")
    username = "maker-" + secrets.token_hex(4)
    created = await api.post(
        "/v1/admin/officials", json={"username": username, "role": "maker"}, headers=admin.headers
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["official"]["role"] == "maker" and len(body["password"]) >= 12
    assert body["totp_provisioning_uri"].startswith("otpauth://totp/")
    again = await api.post(
        "/v1/admin/officials", json={"username": username, "role": "checker"}, headers=admin.headers
    )
    assert again.status_code == 409 and again.json()["code"] == "username_taken"
    for bad in (
        {"username": "X", "role": "maker"},
        {"username": username + "x", "role": "boss"},
        {"username": username + "y", "role": "maker", "password": "mine"},
    ):
        refused = await api.post("/v1/admin/officials", json=bad, headers=admin.headers)
        assert refused.status_code == 422, (bad, refused.text)
    maker = Official(
        official_id=body["official"]["official_id"],
        username=username,
        role="maker",
        password=body["password"],
        secret=body["totp_secret"],
    )
    assert (await login(api, maker)).status_code == 201
    listed = await api.get("/v1/admin/officials?limit=100", headers=admin.headers)
    assert listed.status_code == 200
    entries = await api.get(
        f"/v1/admin/audit-log?target_id={maker.official_id}&action=official.create",
        headers=admin.headers,
    )
    (entry,) = entries.json()["data"]
    assert entry["actor"] == admin.username and entry["after"] == {
        "username": username,
        "role": "maker",
    }


def test_the_first_admin_is_created_with_the_command_line_and_logs_in(
    database_url: str, redis_url: str, service_url: str, tmp_path: Any
) -> None:
    username = "root-" + secrets.token_hex(4)
    env = {
        **os.environ,
        "GWALLET_DATABASE_URL": database_url,
        "GWALLET_REDIS_URL": redis_url,
        "GWALLET_DATA_DIR": str(tmp_path),
        "GWALLET_LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable,
        "-m",
        "gwallet.cli",
        "admin",
        "create",
        "--username",
        username,
        "--role",
        "admin",
    ]
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    password = re.search(r"password \(shown once, store it now\): (\S+)", done.stdout)[1]
    secret = re.search(r"TOTP secret: ([A-Z2-7]+)", done.stdout)[1]
    assert "otpauth://totp/" in done.stdout
    again = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert again.returncode == 1 and "exists" in again.stderr
    chosen = subprocess.run(
        [*command[:-4], "--username", username + "-2", "--role", "auditor", "--password-stdin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        input="a chosen passphrase\n",
        check=False,
    )
    assert chosen.returncode == 0, chosen.stderr
    assert "shown once" not in chosen.stdout
    official = Official(
        official_id="", username=username, role="admin", password=password, secret=secret
    )
    with httpx.Client(base_url=service_url) as client:
        response = client.post(
            SESSIONS,
            json={"username": username, "password": password, "totp_code": official.code()},
        )
        assert response.status_code == 201, response.text
        token = response.json()["access_token"]
        programs = client.get(PROGRAMS, headers={"Authorization": f"Bearer {token}"})
        assert programs.status_code == 200
