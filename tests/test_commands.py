"""The command surface through the real entry point: help from the registry, --version, misspellings,
every subcommand's help in one style, and shell completion."""

from __future__ import annotations

import shutil
import subprocess
from importlib import metadata

import pytest

from emotions_pl.commands import COMMANDS, PROG
from helpers import REPO, run_main

TOOLS = [c for c in COMMANDS if c.module is not None]
LIGHTNING = [c for c in COMMANDS if c.module is None]


def entry(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_main(*args)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_registered_command_by_group(capsys) -> None:
    code, out, _ = entry("--help", capsys=capsys)
    assert code == 0
    assert out.startswith(f"usage: {PROG} ")
    for group in ("train:", "ship:", "watch:", "data:"):
        assert f"\n{group}\n" in out
    for command in COMMANDS:
        line = next(line for line in out.splitlines() if line.split()[:1] == [command.name])
        assert command.summary in line
    # each command sits under its own group heading
    sections = out.split("\n\n")
    for command in COMMANDS:
        section = next(s for s in sections if s.startswith(f"{command.group}:"))
        assert f"  {command.name} " in section
    assert f"{PROG} <command> --help" in out


def test_no_command_prints_help_and_fails(capsys) -> None:
    code, _, err = entry(capsys=capsys)
    assert code == 2
    assert "usage:" in err


def test_version_names_the_stack(capsys) -> None:
    code, out, _ = entry("--version", capsys=capsys)
    assert code == 0
    assert out.startswith(f"{PROG} {metadata.version('emotions-pl')} (")
    for package in ("torch", "pytorch-lightning", "transformers", "litserve"):
        assert f"{package} {metadata.version(package)}" in out


@pytest.mark.parametrize(
    ("typed", "suggested"), [("serv", "serve"), ("fitt", "fit"), ("evalute", "evaluate")]
)
def test_a_misspelled_command_suggests_the_right_one(typed: str, suggested: str, capsys) -> None:
    code, out, err = entry(typed, capsys=capsys)
    assert code == 2
    assert err == f"error: unknown command '{typed}'; did you mean '{suggested}'?\n"
    assert out == ""


def test_an_unknown_command_points_at_help(capsys) -> None:
    code, _, err = entry("zzqx", capsys=capsys)
    assert (code, err) == (2, f"error: unknown command 'zzqx'; run '{PROG} --help' for the list\n")


@pytest.mark.parametrize("command", TOOLS, ids=lambda c: c.name)
def test_every_tool_help_has_the_program_name_and_an_example(command, capsys) -> None:
    code, out, _ = entry(command.name, "--help", capsys=capsys)
    assert code == 0
    assert out.startswith(f"usage: {PROG} {command.name} ")
    assert f"example:\n  {command.example}" in out
    assert command.example.startswith(f"{PROG} {command.name} ")


@pytest.mark.parametrize("command", LIGHTNING, ids=lambda c: c.name)
def test_every_lightning_subcommand_help_has_the_same_style(command, capsys) -> None:
    code, out, err = entry(command.name, "--help", capsys=capsys)
    assert code == 0, err[-2000:]
    assert out.startswith(f"usage: {PROG} [options] {command.name} ")
    assert command.summary[1:] in out
    assert f"example:\n  {command.example}" in out


def test_console_script_is_the_same_entry() -> None:
    script = shutil.which("emotions-pl", path=str(REPO / ".venv" / "bin")) or shutil.which("emotions-pl")
    if script is None:
        pytest.skip("the emotions-pl script is not installed (pip install -e .)")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert all(f"  {c.name} " in proc.stdout for c in COMMANDS)


def test_bash_completion_completes_commands_and_flags_of_both_halves(tmp_path, capsys) -> None:
    code, out, err = entry("--print_completion", "bash", capsys=capsys)
    assert code == 0, err[-2000:]
    script = tmp_path / "emotions-pl.bash"
    script.write_text(out)

    def complete(*words: str) -> list[str]:
        line = " ".join((PROG, *words))
        probe = (
            f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; "
            f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; _shtab_emotions_pl; echo "${{COMPREPLY[@]}}"'
        )
        return subprocess.run(
            ["bash", "-c", probe], capture_output=True, text=True, timeout=30
        ).stdout.split()

    assert complete("ser") == ["serve"]
    assert complete("fit", "--trainer.max_ep") == ["--trainer.max_epochs"]
    assert complete("serve", "--vari") == ["--variant"]
    assert complete("drift", "--refer") == ["--reference"]
    code, out, _ = entry("--print_completion", "zsh", capsys=capsys)
    assert code == 0 and out.startswith(f"#compdef {PROG}")
    assert entry("--print_completion", "fish", capsys=capsys)[0] == 2
