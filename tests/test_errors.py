"""User errors through the real entry point: one short ``error:`` line naming the file, row, field or
flag, exit 2, no traceback -- in the LightningCLI subcommands and the tools alike. ``--debug`` shows the
traceback, and a programming error still raises. In this process (``main`` as ``python -m`` runs it),
except where the environment must be set before a library is imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emotions_pl.artifact.checkpoint import CheckpointError
from helpers import run_main, run_module

SMOKE = ("--config", "configs/experiment/smoke.yaml", "--trainer.max_epochs", "1")


def one_error_line(stderr: str) -> str:
    """Assert a short error with no traceback; return its ``error:`` line."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    tail = stderr[stderr.index(errors[0]) :].strip().splitlines()
    assert len(tail) <= 2, tail  # the error, at most a pointer to --help
    return errors[0]


@pytest.fixture
def fails_cleanly(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run the entry point in this process; assert exit 2 and one short error; return that error."""
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # configs/ paths are the checkout's

    def run(*args: str) -> str:
        capsys.readouterr()
        assert run_main(*args) == 2
        return one_error_line(capsys.readouterr().err)

    return run


@pytest.fixture(scope="module")
def bad_rows(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad_rows")
    for split in ("train", "validation", "test"):
        shutil.copy(sample_dir / f"{split}.jsonl", folder / f"{split}.jsonl")
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines[2] = '{"text": "hello there", "label": "happy"}'
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_fit_bad_data_row_names_file_row_and_value(bad_rows: Path, fails_cleanly) -> None:
    error = fails_cleanly("fit", *SMOKE, "--data.source", str(bad_rows))
    assert f"{bad_rows / 'train.jsonl'}: 1 bad row(s): row 3: label 'happy'" in error


def test_fit_missing_data_folder(tmp_path: Path, fails_cleanly) -> None:
    missing = tmp_path / "no" / "such"
    assert fails_cleanly("fit", *SMOKE, "--data.source", str(missing)) == (
        f"error: {missing}: no such folder (for data set, a local folder or a hub id)."
    )


def test_fit_unreachable_hub_in_one_sentence() -> None:
    # a process of its own: huggingface_hub reads HF_ENDPOINT when it is imported
    proc = run_module(
        "fit", *SMOKE, "--data.source", "dair-ai/emotion", env={"HF_ENDPOINT": "http://127.0.0.1:9"}, expect=2
    )
    error = one_error_line(proc.stderr)
    assert "Cannot reach the Hugging Face hub to download data set 'dair-ai/emotion'" in error


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("fit", *SMOKE, "--model.learning_rate", "abc"), 'Parser key "model.learning_rate"'),
        (("fit", "--config", "configs/experiment/nope.yaml"), "nope.yaml"),
        (("test", *SMOKE, "--ckpt_path", "no/such.ckpt"), "no/such.ckpt"),
    ],
    ids=["bad-flag-value", "missing-config", "missing-checkpoint"],
)
def test_lightning_subcommands_name_the_flag_or_file(
    args: tuple[str, ...], expected: str, fails_cleanly
) -> None:
    assert expected in fails_cleanly(*args)


def test_tools_name_the_file_flag_or_row(
    tmp_path: Path, bad_rows: Path, exported_dir: Path, fails_cleanly
) -> None:
    not_a_ckpt = tmp_path / "notes.ckpt"
    not_a_ckpt.write_text("not a checkpoint")
    empty = tmp_path / "empty_export"
    empty.mkdir()
    out = str(tmp_path / "out")
    cases = {
        ("export", "--ckpt", "no/such.ckpt", "--output", out): "no/such.ckpt: no such checkpoint file.",
        ("export", "--ckpt", str(not_a_ckpt), "--output", out): f"{not_a_ckpt}: not a PyTorch checkpoint",
        ("serve", "--model", str(tmp_path / "nope")): f"--model {tmp_path / 'nope'}: no such export folder.",
        ("serve", "--model", str(empty)): f"{empty}: no export_info.json",
        (
            "serve",
            "--model",
            str(exported_dir),
            "--variant",
            "int9",
        ): "argument --variant: invalid choice: 'int9'",
        ("data", "--source", str(bad_rows), "--output", out): "row 3: label 'happy'",
        (
            "drift",
            "--reference",
            "no/such",
            "--current",
            str(bad_rows),
            "--output",
            out,
        ): "--reference: no/such",
        (
            "robustness",
            "--model",
            str(exported_dir),
            "--data",
            str(bad_rows),
            "--output",
            out,
            "--limit",
            "0",
        ): ("--limit must be positive"),
        ("evaluate", "--ckpt", "x.ckpt", "--data", "d", "--output", out, "--batch-size", "abc"): (
            "argument --batch-size: invalid int value: 'abc'"
        ),
    }
    for args, expected in cases.items():
        assert expected in fails_cleanly(*args), args
    assert not Path(out).exists()  # nothing half-written


def test_debug_shows_the_traceback() -> None:
    """With --debug or EMOTIONS_DEBUG the user error is raised as it is (Python prints the traceback)."""
    export = ("export", "--ckpt", "no/such.ckpt", "--output", "x")
    for args, env in (("--debug", *export), None), (export, {"EMOTIONS_DEBUG": "1"}):
        with pytest.raises(CheckpointError, match=r"no/such\.ckpt"):
            run_main(*args, env=env)


def test_a_programming_error_still_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from emotions_pl.monitor import drift

    def broken(args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(drift, "drift", broken)
    with pytest.raises(KeyError, match="a bug"):
        run_main("drift", "--reference", str(tmp_path), "--current", str(tmp_path), "--output", str(tmp_path))


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """``emotions-pl ... | head``: output into a pipe nobody reads any more is no traceback, exit 1.
    A subprocess: the point is the process's own stdout and its exit."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes (deterministic, unlike a real `head`)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "emotions_pl", "--version"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")
