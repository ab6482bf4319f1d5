"""The pinned environment: requirements.lock fixes one version (with hashes) of every package requirements.txt
asks for and of their dependencies, within requirements.txt's bounds; `make install` installs exactly it."""
import glob
import importlib.metadata
import os
import re
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_lock():
    """{package: (version, marker or None, number of hashes)} of requirements.lock."""
    text = open(os.path.join(ROOT, "requirements.lock"), encoding="utf-8").read()
    pins = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        if entry.startswith("#") or not entry.strip():
            continue
        head = entry.split("\\")[0].strip()
        requirement = Requirement(head)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", head
        if requirement.marker is None or requirement.marker.evaluate():
            pins[canonicalize_name(requirement.name)] = (specifier.version, entry.count("--hash=sha256:"))
    return pins


def read_requirements():
    lines = open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8").read().splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]


def test_the_lock_pins_every_requirement_within_its_bounds_with_hashes():
    pins = read_lock()
    for requirement in read_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements.txt asks for {requirement}; requirements.lock has no {name}: make lock"
        version, hashes = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), f"{name}=={version} is not {requirement}"
    assert all(hashes >= 1 for _, hashes in pins.values())


@pytest.mark.skipif(not glob.glob(os.path.join(sys.prefix, ".postclip-installed-*")),
                    reason="not the environment `make install` made (PYTHON=... brings its own)")
def test_the_environment_make_install_made_is_the_lock():
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    differ = {name: (version, installed.get(name)) for name, (version, _) in read_lock().items()
              if installed.get(name) != version}
    assert differ == {}, f"installed versions differ from requirements.lock (lock, installed): {differ}"

