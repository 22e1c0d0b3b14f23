"""The distribution ships every package of the source tree (a wheel, not only an editable install)."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is in the standard library from Python 3.11")
def test_every_package_is_included():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["packages"]["find"]["include"]
    packages = sorted(
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("rnnkit", "kernels", "diagnostics")
        for init in (ROOT / top).rglob("__init__.py")
    )
    assert "rnnkit.train" in packages
    for package in packages:
        assert any(fnmatch.fnmatch(package, p) for p in patterns), f"{package} is not shipped by {patterns}"
    assert config["py-modules"] == ["cli"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is in the standard library from Python 3.11")
def test_c_sources_are_shipped():
    """kernels/cpu/_step.c is compiled on the user's machine: a wheel must carry it."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    sources = [p.name for p in (ROOT / "kernels" / "cpu").glob("*.c")]
    assert sources
    assert all(any(fnmatch.fnmatch(name, p) for p in data["kernels.cpu"]) for name in sources)


def test_every_file_the_docs_link_to_is_in_the_repository():
    """README.md, RESULTS.md and BENCHMARKS.md link plots and pages by relative path: each must be a
    file git tracks (RESULTS.md's curves once lay in an ignored folder and showed nowhere)."""
    import re
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    except FileNotFoundError:
        pytest.skip("no git on this machine")
    tracked = set(listed.split())
    if not tracked:
        pytest.skip("not a git checkout")
    for doc in ("README.md", "RESULTS.md", "BENCHMARKS.md"):
        for target in re.findall(r"\]\(([^)#\s]+)\)", (ROOT / doc).read_text()):
            if "://" in target:
                continue
            assert target in tracked, f"{doc} links {target}, which git does not track"
