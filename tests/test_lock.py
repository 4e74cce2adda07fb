"""The lock file is what `make` installs: complete, hashed, within pyproject's ranges, and installed."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def _locked() -> dict[str, tuple[Version, list[str]]]:
    """``{name: (pinned version, [sha256 hashes])}`` from the uv/pip-tools format of the lock."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if pin:
            name = canonicalize_name(pin.group(1))
            entries[name] = (Version(pin.group(2)), [])
        elif name and (digest := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            entries[name][1].append(digest.group(1))
    return entries


def _declared() -> list[Requirement]:
    """Every requirement of pyproject.toml, core and every extra, without geomlib's own extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += [Requirement(r) for r in extra]
    return [r for r in declared if canonicalize_name(r.name) != "geomlib"]


def test_every_declared_dependency_is_locked_within_its_range_and_hashed():
    locked = _locked()
    assert len(locked) > 100  # the whole tree, not only the direct dependencies
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is in pyproject.toml but not in the lock: run `make lock`"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} in the lock is outside pyproject's {requirement.specifier}: `make lock`"
        )
    unhashed = [name for name, (_, hashes) in locked.items() if not hashes]
    assert not unhashed, f"entries without a hash: {unhashed}"
    assert str(locked["torch"][0]).endswith("+cpu")  # the CPU build: no CUDA libraries on a CPU machine


def test_the_environment_is_exactly_the_lock():
    """What `make` installed: every locked version (torch too, unless a TORCH= build was asked for)."""
    differ = {}
    for name, (version, _) in _locked().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            differ[name] = (str(version), None)
            continue
        if name == "torch" and not installed.local:  # e.g. a CUDA build: TORCH="torch==... --index-url"
            continue
        if installed != version:
            differ[name] = (str(version), str(installed))
    assert not differ, f"installed versions differ from requirements.lock (locked, installed): {differ}"


def test_conda_environment_installs_the_same_lock():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    dependencies = environment["dependencies"]
    assert "python=3.11" in dependencies  # the lock's Python
    pip_lines = next(item["pip"] for item in dependencies if isinstance(item, dict))
    assert "-r requirements.lock" in pip_lines
    conda_packages = [d for d in dependencies if isinstance(d, str) and d not in ("python=3.11", "pip")]
    assert not conda_packages, f"packages outside the lock: {conda_packages}"
