"""The package layout: jobs in folders, imports one way, every subpackage in the wheel."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cryosamu_cli"
JOBS = ("cli", "enhance", "data", "training", "benchmark")
SUBPACKAGES = (*JOBS, "model")


def imported_modules(path: Path) -> set[str]:
    """Every ``cryosamu_cli...`` module a file imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("cryosamu_cli")}


def test_the_ground_floor_is_small_and_no_module_is_long():
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top_level) <= 12, top_level
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") \
        == sorted(SUBPACKAGES)
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_subpackage_inits_are_empty():
    for name in ("enhance", "data", "training", "benchmark", "cli"):
        text = (PACKAGE / name / "__init__.py").read_text()
        assert not [line for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith(("#", '"""'))], name


def test_imports_run_one_way():
    """The ground floor and model/ import no job; no job imports the CLI."""
    for path in PACKAGE.rglob("*.py"):
        folder = path.relative_to(PACKAGE).parts[0] if path.parent != PACKAGE else ""
        upward = {m for m in imported_modules(path)
                  if any(m.startswith(f"cryosamu_cli.{job}") for job in JOBS)}
        if folder in ("", "model"):
            assert not upward, (path, upward)
        elif folder != "cli":
            assert not {m for m in upward if m.startswith("cryosamu_cli.cli")}, (path, upward)


def test_the_wheel_holds_every_subpackage_and_imports_outside_the_checkout(tmp_path):
    pytest.importorskip("hatchling", reason="hatchling (the build backend) is not installed: "
                        "pip install -e '.[test]'")
    root = PACKAGE.parent
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(root)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("cryosamu-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for sub in SUBPACKAGES:
        assert f"cryosamu_cli/{sub}/__init__.py" in names, sub
    assert "cryosamu_cli/data/paper_pairs.csv" in names
    assert "cryosamu_cli/weights/manifest.json" in names
    assert "cryosamu_cli/docs/MODEL_CARD.md" in names  # `weights list` points at it
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                                "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    code = ("import cryosamu_cli, cryosamu_cli.enhance.pipeline, cryosamu_cli.training.loop, "
            "cryosamu_cli.data.prepare, cryosamu_cli.benchmark.quality; "
            "from cryosamu_cli.data.prepare import PAPER_PAIRS; "
            "from cryosamu_cli.cli.weights import model_card_path; "
            "print(cryosamu_cli.__file__); print(PAPER_PAIRS.is_file() and "
            "model_card_path().is_file())")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    where, pairs_found = done.stdout.split()
    assert Path(where).is_relative_to(site) and pairs_found == "True"
