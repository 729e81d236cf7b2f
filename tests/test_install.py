"""The lock (requirements/lock.txt) pins every distribution that `make setup` asks for, inside pyproject's ranges.

`make setup` installs mlquant with the extras in the Makefile's EXTRAS, using the lock as a pip constraints file:
a requirement the lock does not pin would be installed at whatever version is newest that day.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def makefile_extras(makefile: Path) -> list[str]:
    match = re.search(r"^EXTRAS\s*\??=\s*(\S+)\s*$", makefile.read_text(), re.MULTILINE)
    assert match, f"no EXTRAS line in {makefile}"
    return match.group(1).split(",")


def read_lock(lock: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, raw in enumerate(lock.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{lock.name}:{number}: not a 'name==version' pin: {raw}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{lock.name}:{number}: {name} pinned twice"
        pins[name] = Version(specs[0].version)
    return pins


def requirements(pyproject: Path, extras: list[str]) -> list[Requirement]:
    """mlquant's dependencies plus those of the extras, self-references (mlquant[a,b]) expanded."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    out = [Requirement(r) for r in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"the Makefile installs extra {extra!r}, which pyproject.toml does not define"
        for raw in optional[extra]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def problems(pyproject: Path, makefile: Path, lock: Path) -> list[str]:
    pins = read_lock(lock)
    found = []
    for req in requirements(pyproject, makefile_extras(makefile)):
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            found.append(f"{req.name}: required ({req}) but not pinned in {lock.name}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            found.append(f"{req.name}: {lock.name} pins {pins[name]}, outside pyproject's range {req}")
    if pins.get("torch") != Version("2.13.0"):
        found.append(f"torch: {lock.name} must pin torch==2.13.0 (the CPU wheel's release), not {pins.get('torch')}")
    return found


def copies(tmp_path: Path) -> tuple[Path, Path, Path]:
    for name in ("pyproject.toml", "Makefile"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    (tmp_path / "lock.txt").write_text((ROOT / "requirements" / "lock.txt").read_text())
    return tmp_path / "pyproject.toml", tmp_path / "Makefile", tmp_path / "lock.txt"


def test_lock_pins_every_requirement_within_its_range() -> None:
    assert problems(ROOT / "pyproject.toml", ROOT / "Makefile", ROOT / "requirements" / "lock.txt") == []


def test_a_missing_pin_is_reported(tmp_path: Path) -> None:
    pyproject, makefile, lock = copies(tmp_path)
    lines = lock.read_text().splitlines()
    lock.write_text("\n".join(line for line in lines if not line.lower().startswith("transformers==")) + "\n")
    found = problems(pyproject, makefile, lock)
    assert len(found) == 1 and found[0].startswith("transformers: required ("), found


def test_a_pin_outside_the_range_and_a_plain_torch_are_reported(tmp_path: Path) -> None:
    pyproject, makefile, lock = copies(tmp_path)
    text = re.sub(r"(?mi)^pandas==.*$", "pandas==1.5.3", lock.read_text())
    lock.write_text(re.sub(r"(?m)^torch==.*$", "torch==2.14.1", text))
    found = problems(pyproject, makefile, lock)
    assert any(p.startswith("pandas: lock.txt pins 1.5.3, outside") for p in found), found
    assert any(p.startswith("torch: lock.txt must pin torch==2.13.0") for p in found), found


def test_an_extra_of_the_makefile_is_covered(tmp_path: Path) -> None:
    """A dev-only requirement (reached through EXTRAS=dev) is checked like a core one."""
    pyproject, makefile, lock = copies(tmp_path)
    lock.write_text("\n".join(line for line in lock.read_text().splitlines() if not line.startswith("ruff==")) + "\n")
    assert any(p.startswith("ruff: required") for p in problems(pyproject, makefile, lock))
