"""README.md stays true: every ``cryosamu`` command in its fenced blocks parses with today's
options, every script it names exists, and the cheap commands run as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import pytest
import typer

from cryosamu_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[list[str]]:
    """The words of every shell command in README.md's ```bash blocks (continuations joined,
    comments dropped, ``a && b`` split)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(words)
    return commands


def _parse(args: list[str]) -> None:
    """Parse ``cryosamu ARGS`` as the command line would, without running it (raises the
    usage errors of the Click that Typer uses)."""
    command, rest, names = typer.main.get_command(app), list(args), ["cryosamu"]
    while hasattr(command, "get_command"):  # a group: the next word names a command
        name, rest = rest[0], rest[1:]
        command = command.get_command(command.context_class(command), name)
        if command is None:
            raise LookupError(f"no command '{name}' in {' '.join(names)}")
        names.append(name)
    command.make_context(" ".join(names), rest)


def test_every_readme_command_parses_with_todays_options():
    commands = [words[1:] for words in _readme_commands() if words[0] == "cryosamu"]
    assert len(commands) > 30  # the parser found the README's commands
    for args in commands:
        _parse(args)
    with pytest.raises(Exception, match="No such option: --no-such-option"):  # a real check
        _parse(["enhance", "map.mrc", "--no-such-option"])
    with pytest.raises(Exception, match="valid integer"):
        _parse(["train", "data", "-o", "run", "--epochs", "abc"])
    with pytest.raises(LookupError, match="no command 'no-such-command'"):
        _parse(["weights", "no-such-command"])


def test_every_script_the_readme_names_exists():
    scripts = [words[1] for words in _readme_commands()
               if words[0] in ("python", "python3", "bash") and words[1:2]
               and words[1].startswith("benchmarks/")]
    assert len(scripts) > 10
    missing = [s for s in scripts if not (ROOT / s).is_file()]
    assert not missing


def _cryosamu() -> list[str]:
    """The installed command, else the same entry point through this interpreter."""
    found = shutil.which("cryosamu")
    return [found] if found else [sys.executable, "-m", "cryosamu_cli.cli.app"]


def test_the_quickstart_and_weights_commands_run_as_written_and_again(tmp_path):
    commands = _readme_commands()
    start = next(i for i, words in enumerate(commands)  # `example && enhance`: the quickstart
                 if words[:2] == ["cryosamu", "example"] and commands[i + 1][1] == "enhance")
    runnable = commands[start:start + 2]
    runnable += [w for w in commands if w[:2] == ["cryosamu", "weights"]
                 and w[2] in ("list", "verify", "download")]
    env = {**os.environ, "CRYOSAMU_OFFLINE": "1", "CRYOSAMU_CACHE_DIR": str(tmp_path / "cache")}
    for attempt in range(2):  # the quickstart can be run again
        for words in runnable:
            done = subprocess.run([*_cryosamu(), *words[1:]], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, (attempt, words, done.stderr[-2000:])
    with mrcfile.open(tmp_path / "helix_bundle_enhanced.mrc") as mrc:
        label = bytes(mrc.header.label[mrc.header.nlabl - 1]).decode()
    assert "res 6.00 A (--resolution)" in label
