"""README.md's Settings table lists every Settings field, with its env name and default."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import SecretStr
from stack import ROOT

from service.config import Settings


def show_default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return os.path.relpath(value, ROOT)
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(empty)"
    return str(value)


def table() -> str:
    """The table as the README holds it (regenerate with ``python tests/service/test_readme_settings.py``)."""
    rows = ["| setting | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | `BACKDROP_{name.upper()}` | `{show_default(name)}` | {desc} |")
    return "\n".join(rows)


def readme_rows() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    rows = {}
    for m in re.finditer(r"^\| `([a-z0-9_]+)` \| `([A-Z0-9_]+)` \| `([^`]*)` \|", text, re.M):
        rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_every_setting_is_in_the_readme() -> None:
    rows = readme_rows()
    assert set(rows) == set(Settings.model_fields), (
        f"missing: {sorted(set(Settings.model_fields) - set(rows))}, extra: {sorted(set(rows) - set(Settings.model_fields))}"
    )
    for name, (env, default) in rows.items():
        assert env == f"BACKDROP_{name.upper()}"
        assert default == show_default(name), f"{name}: README says {default!r}, Settings says {show_default(name)!r}"


if __name__ == "__main__":
    print(table())
