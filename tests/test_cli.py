"""The ``cxrnet`` console command: same commands, overrides and exit codes as ``python -m cxrnet.<module>``,
and shell completion."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxrnet import cli


def _cxrnet(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script when there is one; ``python -m cxrnet.cli`` (the same main) otherwise."""
    script = shutil.which("cxrnet")
    command = [script] if script else [sys.executable, "-m", "cxrnet.cli"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_command_names_a_module_with_a_main() -> None:
    assert {"train", "predict", "evaluate", "calibrate", "export", "explain", "check"} <= set(cli.COMMANDS)
    for module, _ in cli.COMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_usage_lists_the_commands_and_unknown_ones_fail(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert all(name in shown for name in cli.COMMANDS) and "not a medical device" in shown
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_a_command_runs_its_module_as_python_dash_m_with_the_rest_of_the_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(cli.runpy, "run_module", lambda name, **kw: seen.append((name, list(sys.argv[1:]))))
    monkeypatch.setattr(sys, "argv", ["cxrnet"])
    assert cli.main(["explain", "checkpoint=a.ckpt", "data=synthetic", "--cfg", "job"]) == 0
    assert seen == [("cxrnet.explain.evaluate", ["checkpoint=a.ckpt", "data=synthetic", "--cfg", "job"])]


@pytest.mark.slow
def test_the_console_command_composes_the_same_config_and_keeps_exit_codes(tmp_path: Path) -> None:
    via_cli = _cxrnet("train", "--cfg", "job", "+experiment=quickstart", "seed=7", cwd=tmp_path)
    via_module = subprocess.run(
        [sys.executable, "-m", "cxrnet.train", "--cfg", "job", "+experiment=quickstart", "seed=7"],
        cwd=tmp_path,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert via_cli.returncode == via_module.returncode == 0, via_cli.stderr[-2000:]
    assert via_cli.stdout == via_module.stdout and "seed: 7" in via_cli.stdout
    # A command's own failure is the command's exit code (check exits 2 on a bad override).
    bad = _cxrnet("check", "data=no_such_dataset", cwd=tmp_path)
    assert bad.returncode == 2 and "no_such_dataset" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_hydra_completion_answers_for_a_command(tmp_path: Path) -> None:
    line = "train logger=t"  # the line as the completion script passes it: without the word "cxrnet"
    result = _cxrnet(
        "train", "-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "logger=tensorboard" in result.stdout.split()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("cxrnet") is None, reason="needs bash and "
                    "the installed cxrnet console script")
def test_the_bash_completion_script_completes_commands_and_overrides(tmp_path: Path) -> None:
    script = tmp_path / "cxrnet.bash"
    script.write_text(cli.completion_script("bash"))
    probe = f"""
source {script}
COMP_LINE="cxrnet ev"; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=(cxrnet ev); COMP_CWORD=1
_cxrnet_completion; echo "commands: ${{COMPREPLY[@]}}"
COMP_LINE="cxrnet train debug="; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=(cxrnet train debug=); COMP_CWORD=2
_cxrnet_completion; echo "overrides: ${{COMPREPLY[@]}}"
"""
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert lines["commands"].split() == ["evaluate"], result.stderr
    assert {"debug=fdr", "debug=overfit", "debug=profiler"} <= set(lines["overrides"].split()), result.stderr
    assert cli.completion_script("zsh").startswith("autoload -U +X bashcompinit")
