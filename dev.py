#!/usr/bin/env python3
"""Bootstrap for a fresh machine that has only Python 3.11+.

    python3 dev.py demo            the service with demo data (embedded servers unless
                                   GWALLET_DATABASE_URL / GWALLET_REDIS_URL are set)
    python3 dev.py test [ARGS]     the test suite; ARGS go to pytest; exits with pytest's code

Both create .venv if it is missing and install the project into it (``pip install -e
.[test]``) whenever pyproject.toml changed since the last install (a stamp file remembers).
Standard library only: this runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".gwallet-install-stamp"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
USAGE = "usage: python3 dev.py demo | test [pytest args]"


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - this runs before anything is installed
        print("G-Wallet needs Python 3.11 or newer", file=sys.stderr)
        return 2
    if not argv or argv[0] not in {"demo", "test"}:
        print(USAGE, file=sys.stderr)
        return 2
    ensure_installed()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return run([str(BIN / "gwallet"), "demo", "--serve", *rest])
    return run([str(PYTHON), "-m", "pytest", *rest])


def ensure_installed() -> None:
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    if not PYTHON.exists():
        print(f"creating {VENV.relative_to(ROOT)} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
        # A venv's bundled pip may predate editable installs from pyproject.toml alone.
        subprocess.run([*pip, "install", "--upgrade", "pip"], check=True, cwd=ROOT)
    wanted = _fingerprint()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    print("installing the project and its test dependencies into .venv ...", flush=True)
    subprocess.run([*pip, "install", "-e", ".[test]"], check=True, cwd=ROOT)
    STAMP.write_text(wanted + "\n")


def _fingerprint() -> str:
    """What the installed environment depends on: pyproject.toml and the interpreter."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def run(command: list[str]) -> int:
    try:
        return subprocess.run(command, cwd=ROOT).returncode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
