"""Drift: quiet on samples of one distribution, loud on shifted ones; reports and exit codes gate jobs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emotions_pl.monitor import drift, drift_sample
from emotions_pl.schema import LABELS
from emotions_pl.serve.predlog import PredictionLog
from helpers import REPO, run_main

WORDS = {
    "sadness": ["lonely", "miserable", "gloomy", "heartbroken", "low", "hopeless"],
    "joy": ["happy", "cheerful", "glad", "excited", "content", "thrilled"],
    "love": ["loving", "tender", "devoted", "caring", "fond", "affectionate"],
    "anger": ["furious", "irritated", "annoyed", "bitter", "resentful", "mad"],
    "fear": ["scared", "nervous", "anxious", "terrified", "uneasy", "afraid"],
    "surprise": ["amazed", "shocked", "stunned", "astonished", "curious", "impressed"],
}
THINGS = [
    "my job",
    "the weekend",
    "my family",
    "this blog",
    "school",
    "the weather",
    "my friends",
    "the news",
]
TEMPLATES = [
    "i feel {w} about {t}",
    "im feeling so {w} since {t} changed",
    "i was {w} when i thought about {t}",
    "i have been feeling {w} lately and i think {t} is the reason",
    "i feel a little {w} today",
]
SHARES = [0.29, 0.34, 0.08, 0.13, 0.12, 0.04]  # roughly the emotion data's label shares


def emotion_rows(n: int, seed: int, labels: list[str] | None = None) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choices(labels or LABELS, weights=None if labels else SHARES)[0]
        text = rng.choice(TEMPLATES).format(w=rng.choice(WORDS[label]), t=rng.choice(THINGS))
        rows.append({"text": text, "label": label})
    return rows


def review_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    products = ["blender", "usb charger", "vacuum cleaner", "phone case", "toaster", "headset"]
    parts = ["cable", "battery", "lid", "motor", "stitching", "firmware"]
    return [
        {
            "text": f"the {rng.choice(products)} arrived in {rng.randint(2, 9)} days, "
            f"{rng.choice(parts)} {rng.choice(['broke', 'works', 'rattles', 'overheats'])} "
            f"after {rng.randint(1, 30)} uses. {rng.randint(1, 5)} stars, "
            f"{rng.choice(['would not recommend', 'decent value', 'refund requested'])}"
        }
        for _ in range(n)
    ]


def code_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "text": f"def {rng.choice(['parse', 'load', 'fetch'])}_{i}(x): "
            f"return [y.{rng.choice(['strip', 'lower', 'split'])}() for y in x if y != {rng.randint(0, 99)}]"
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_drift(*args: str) -> tuple[int, str, dict | None]:
    """``drift ARGS`` in-process through the real entry point; return exit code, output and JSON summary."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_main("drift", *args)
    report = Path(args[args.index("--output") + 1]) / "drift.json"
    return rc, out.getvalue() + err.getvalue(), json.loads(report.read_text()) if report.exists() else None


def by_name(summary: dict) -> dict[str, dict]:
    return {c["name"]: c for c in summary["checks"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ref") / "train.jsonl", emotion_rows(2000, seed=1))


def test_quiet_on_same_distribution(reference: Path, tmp_path: Path) -> None:
    current = write_jsonl(tmp_path / "current.jsonl", emotion_rows(600, seed=2))
    rc, out, summary = run_drift(
        "--reference", str(reference.parent), "--current", str(current), "--output", str(tmp_path / "report")
    )
    assert rc == 0, out
    assert summary["drift"] is False and summary["drifted"] == 0
    checks = by_name(summary)
    assert {n for n, c in checks.items() if c["skipped"] is None} == {"text_length", "oov_rate", "label"}
    assert checks["label"]["details"]["labels"] == "true"
    assert summary["reference"]["source"] == str(reference)  # the folder's train split
    html = (tmp_path / "report" / "drift.html").read_text()
    assert "Drift: no drift" in html and html.count("<img src='data:image/png;base64,") == 2


def test_no_false_alarms_over_many_seeds() -> None:
    """Bonferroni plus effect-size floors: 30 same-distribution pairs, not one alarm."""
    floors = drift.parse_effects([])
    pool = emotion_rows(6000, seed=7)
    alarms = []
    for seed in range(30):
        rows = random.Random(seed).sample(pool, 2500)
        ref, cur = rows[:2000], rows[2000:]
        samples = [
            drift_sample.Sample(
                "x",
                "data",
                np.array([len(r["text"]) for r in part], dtype=float),
                [r["text"] for r in part],
                [r["label"] for r in part],
                "true",
            )
            for part in (ref, cur)
        ]
        checks = drift.run_checks(*samples, LABELS, floors, seed=seed)
        alarms += [(seed, c.name) for c in checks if c.drift]
    assert alarms == []


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        ("long", {"text_length"}),
        ("reviews", {"text_length", "oov_rate"}),
        ("code", {"text_length", "oov_rate"}),
        ("labels", {"label"}),
    ],
)
def test_flags_shifted_sets(reference: Path, tmp_path: Path, shift: str, expected: set[str]) -> None:
    rows = {
        "long": lambda: [
            {"text": " and ".join(r["text"] for r in emotion_rows(3, seed=100 + i)), "label": "joy"}
            for i in range(300)
        ],
        "reviews": lambda: review_rows(300, seed=3),
        "code": lambda: code_rows(300, seed=4),
        "labels": lambda: emotion_rows(300, seed=5, labels=["anger", "fear"]),
    }[shift]()
    current = write_jsonl(tmp_path / "current.jsonl", rows)
    rc, out, summary = run_drift(
        "--reference", str(reference), "--current", str(current), "--output", str(tmp_path / "report")
    )
    assert rc == 1, out
    assert summary["drift"] is True
    drifted = {n for n, c in by_name(summary).items() if c["drift"]}
    assert expected <= drifted, out
    assert "DRIFT" in out and "Drift: DRIFT" in (tmp_path / "report" / "drift.html").read_text()


def test_cli_exit_code_gates_a_job(reference: Path, tmp_path: Path) -> None:
    """Through ``python -m emotions_pl drift`` as a pipeline step runs it: exit 1 on drift."""
    current = write_jsonl(tmp_path / "current.jsonl", code_rows(200, seed=4))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "emotions_pl",
            "drift",
            "--reference",
            str(reference),
            "--current",
            str(current),
            "--output",
            str(tmp_path / "report"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
    )
    assert proc.returncode == 1, proc.stderr
    assert "DRIFT:" in proc.stdout and json.loads((tmp_path / "report" / "drift.json").read_text())["drift"]


def test_threshold_and_effect_floor_gate_the_exit_code(reference: Path, tmp_path: Path) -> None:
    current = write_jsonl(tmp_path / "current.jsonl", review_rows(300, seed=3))
    rc, out, summary = run_drift(
        "--reference",
        str(reference),
        "--current",
        str(current),
        "--output",
        str(tmp_path / "a"),
        "--threshold",
        "5",
    )
    assert rc == 0 and summary["drifted"] >= 2 and summary["drift"] is False, out
    rc, out, summary = run_drift(
        "--reference",
        str(reference),
        "--current",
        str(current),
        "--output",
        str(tmp_path / "b"),
        "--min-effect",
        "text_length=1.0",
        "--min-effect",
        "oov_rate=1.0",
    )
    assert rc == 0 and summary["drifted"] == 0, out


def server_log(folder: Path, texts: list[str], label: str, log_text: bool = False) -> list[Path]:
    """Prediction logs written by the server's own writer (predlog.PredictionLog), rotated every ~4 kB."""
    log = PredictionLog(folder, log_text=log_text, max_bytes=4000, backups=20)
    log.start()
    for i in range(0, len(texts), 4):
        batch = texts[i : i + 4]
        response = [{"label": label, "score": 0.9, "scores": {label: 0.9}} for _ in batch]
        log.put(json.dumps({"texts": batch}).encode(), json.dumps(response).encode(), 0.004)
    log.stop()  # flushes
    return sorted(folder.iterdir())


def drift_on_logs(reference: Path, tmp_path: Path) -> tuple[int, str, dict]:
    """Drift of the server logs under ``tmp_path/logs`` against ``reference``."""
    return run_drift(
        "--reference",
        str(reference),
        "--current",
        str(tmp_path / "logs"),
        "--output",
        str(tmp_path / "report"),
    )


def test_prediction_logs_as_current(reference: Path, tmp_path: Path) -> None:
    """Log records carry length, predicted label and score, no text: the length check runs on them, and
    the label check is skipped rather than comparing predictions with true labels."""
    texts = [row["text"] for row in review_rows(200, seed=9)]
    files = server_log(tmp_path / "logs", texts, "anger")
    assert len(files) > 1 and any(f.name.endswith(".jsonl.1") for f in files)  # rotated
    rc, out, summary = drift_on_logs(reference, tmp_path)
    assert rc == 1, out
    assert summary["current"] == {"source": ", ".join(map(str, files)), "kind": "log", "rows": 200}
    checks = by_name(summary)
    assert checks["text_length"]["drift"] is True
    assert checks["text_length"]["details"]["current"]["mean"] == pytest.approx(
        np.mean([len(t) for t in texts])
    )
    assert "pass --model" in checks["label"]["skipped"]
    assert checks["oov_rate"]["skipped"]


def test_logs_with_text_get_the_vocabulary_check(reference: Path, tmp_path: Path) -> None:
    server_log(tmp_path / "logs", [row["text"] for row in code_rows(120, seed=1)], "joy", log_text=True)
    rc, out, summary = drift_on_logs(reference, tmp_path)
    assert rc == 1 and by_name(summary)["oov_rate"]["drift"] is True, out


def test_bad_input_names_file_and_row(reference: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "i feel fine", "label": 1}\n{"text": "i feel odd", "label": "bored"}\n')
    rc, out, summary = run_drift(
        "--reference", str(reference), "--current", str(bad), "--output", str(tmp_path / "report")
    )
    assert rc == 2 and summary is None
    assert f"{bad} row 2: label 'bored'" in out
    rc, out, _ = run_drift(
        "--reference",
        str(tmp_path / "missing.jsonl"),
        "--current",
        str(bad),
        "--output",
        str(tmp_path / "report"),
    )
    assert rc == 2 and "missing.jsonl does not exist" in out


@pytest.mark.integration
def test_real_data_quiet_on_held_out_split_and_loud_on_long_texts(shared_data: Path, tmp_path: Path) -> None:
    rc, out, summary = run_drift(
        "--reference",
        str(shared_data / "validation.jsonl"),
        "--current",
        str(shared_data / "test.jsonl"),
        "--output",
        str(tmp_path / "quiet"),
    )
    assert rc == 0 and summary["drifted"] == 0, out
    rows = [json.loads(line) for line in (shared_data / "test.jsonl").open()]
    cutoff = np.percentile([len(r["text"]) for r in rows], 75)
    long = write_jsonl(tmp_path / "long.jsonl", [r for r in rows if len(r["text"]) > cutoff])
    rc, out, summary = run_drift(
        "--reference", str(shared_data), "--current", str(long), "--output", str(tmp_path / "loud")
    )
    assert rc == 1 and by_name(summary)["text_length"]["drift"] is True, out


@pytest.mark.integration
def test_real_data_with_model_predictions_stays_quiet(
    shared_data: Path, exported_dir: Path, tmp_path: Path
) -> None:
    """With --model every check runs (predicted labels and scores, [UNK] rate), and still no false alarm."""
    rc, out, summary = run_drift(
        "--reference",
        str(shared_data / "validation.jsonl"),
        "--current",
        str(shared_data / "test.jsonl"),
        "--model",
        str(exported_dir),
        "--output",
        str(tmp_path / "report"),
    )
    assert rc == 0 and summary["checks_run"] == 5 and summary["drifted"] == 0, out
    assert by_name(summary)["label"]["details"]["labels"] == "predicted"
