"""The README documents every setting, and the quick start is exactly two commands."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from gwallet.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_the_readme_lists_every_setting_with_its_environment_variable() -> None:
    for field in msgspec.structs.fields(Settings):
        row = f"| `{field.name}` | `GWALLET_{field.name.upper()}` |"
        assert row in README, f"README configuration table misses {field.name}"


def test_the_quick_start_is_the_two_dev_py_commands() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("##", 1)[0]
    block = re.search(r"```\n(.*?)```", quick_start, re.DOTALL)[1]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["python3 dev.py demo", "python3 dev.py test"]
