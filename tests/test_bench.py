"""The benchmarks stay runnable: each one's ``--smoke`` (``python -m scripts.bench.<name>`` from the
repository root, as documented) on the tiny exported model or the packaged sample, and its JSON's keys
and values. No script edits ``sys.path``: they import as modules of the repository."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO

CHUNKS = {"1", "4", "8", "32"}


def smoke(name: str, output: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m scripts.bench.NAME --smoke --output OUTPUT ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", f"scripts.bench.{name}", "--smoke", "--output", str(output), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def bench(name: str, output: Path, *args: str) -> dict[str, Any]:
    """A smoke run that must pass; the JSON it wrote."""
    proc = smoke(name, output, *args)
    assert proc.returncode == 0, (
        f"{name}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return json.loads(output.read_text())


def check_bound(bound: dict[str, Any]) -> None:
    assert set(bound["chunk_texts_per_s"]) == CHUNKS
    assert bound["bound_texts_per_s"] == max(bound["chunk_texts_per_s"].values()) > 0
    assert bound["chunk_texts_per_s"][str(bound["best_chunk"])] == bound["bound_texts_per_s"]


def test_no_script_edits_sys_path() -> None:
    edits = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)\s*\(|\[.*\]\s*=|\+?=)|site\.addsitedir")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "scripts").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if edits.search(line)
    ]
    assert found == []


def test_a_smoke_run_never_writes_into_results() -> None:
    output = REPO / "results" / "bench" / "data.json"
    before = output.read_bytes() if output.exists() else None
    proc = smoke("data", output)
    assert proc.returncode == 1 and "--smoke never writes into" in proc.stderr, proc.stderr[-3000:]
    assert (output.read_bytes() if output.exists() else None) == before


@pytest.mark.slow
def test_serve_smoke(exported_dir: Path, tmp_path: Path) -> None:
    report = bench("serve", tmp_path / "serve.json", "--model", str(exported_dir))
    assert (
        report["smoke"] is True and report["machine"]["cpus"] >= 1 and report["machine"]["torch_threads"] >= 1
    )
    servers = {r["server"] for r in report["results"]}
    assert report["default_server"] in servers and any(s.startswith("baseline") for s in servers)
    for row in report["results"]:
        assert row["rps"] > 0 and row["non_2xx"] == 0 and row["p50_ms"] <= row["p99_ms"], row
    assert "best over chunk sizes" in report["bound_note"]
    check_bound(report["bare"][report["default_variant"]])
    assert {r["x_bound"] for r in report["ratios"]} and all(r["x_bound"] > 0 for r in report["ratios"])
    assert [f["what"] for f in report["floors"]]  # computed from the run's numbers (not met by a tiny model)


@pytest.mark.slow
def test_prune_smoke(exported_dir: Path, tmp_path: Path) -> None:
    model = str(exported_dir)
    report = bench("prune", tmp_path / "prune.json", "--model", f"ref={model}", "--model", f"copy={model}")
    assert "best over chunk sizes" in report["bound_note"]
    assert [(r["label"], r["variant"]) for r in report["rows"]] == [("ref", "int8"), ("copy", "int8")]
    for row in report["rows"]:
        assert row["layers"] == 2 and row["parameters"] > 0 and 0 <= row["accuracy"] <= 1
        assert row["rps_c16"] > 0 and row["chunk1_texts_per_s"] > 0
        check_bound(row["rounds"][0])
        assert 0.3 < row["x_bound"] < 3  # the same folder twice: a speed-up near 1
    assert report["reference"] == "ref" and report["floor_met_by"] == []


@pytest.mark.slow
def test_explain_smoke(exported_dir: Path, tmp_path: Path) -> None:
    report = bench("explain", tmp_path / "explain.json", "--model", str(exported_dir))
    assert [r["steps"] for r in report["cost"]] == [8, report["default_steps"]]
    assert all(r["mean_ms"] > 0 for r in report["cost"])
    faithful = report["faithfulness"]["by_variant"]
    assert faithful and all(r["texts"] > 0 for rows in faithful.values() for r in rows)
    phases = report["serve"]["rows"]
    assert [r["phase"] for r in phases] == ["alone", "explain saturated", "alone again"]
    assert all(r["rps"] > 0 and r["non_2xx"] == 0 for r in phases)
    assert "200" in phases[1]["explain_statuses"] and report["serve"]["kept"] > 0


@pytest.mark.slow
def test_data_smoke(tmp_path: Path) -> None:
    report = bench("data", tmp_path / "data.json")
    assert [r["train_rows"] for r in report["rows"]] == [48]
    for row in report["rows"]:
        assert (
            row["rows_per_s"] > 0 and row["peak_rss_gb"] > 0 and row["processes"] >= 1 and row["steps"] == 1
        )


@pytest.mark.slow
def test_train_smoke(tmp_path: Path) -> None:
    report = bench("train", tmp_path / "train.json")
    contenders = {r["contender"] for r in report["rows"]}
    assert contenders == {"a_emotions_pl", "a_emotions_pl_ema", "c_hf_trainer_tuned", "bare_bound_cls_only"}
    assert all(r["samples_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in report["rows"])
    (ema,) = report["ema"]
    assert ema["callback"] == "configs/callbacks/ema.yaml" and ema["floor_pct"] == 5
    assert ema["step_s"] > 0 and ema["step_s_ema"] > 0 and isinstance(ema["met"], bool)
