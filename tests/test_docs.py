"""The docs' generated tables agree with the committed result files (scripts/docs_tables.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO

SCRIPT = REPO / "scripts" / "docs_tables.py"


def check(root: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--check", "--root", str(root)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_the_docs_quote_the_committed_results() -> None:
    done = check(REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_changed_result_makes_the_docs_stale(tmp_path: Path) -> None:
    for name in ("README.md", "docs", "reports", "results"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        elif source.is_file():
            shutil.copy(source, tmp_path / name)
    metrics = tmp_path / "reports" / "metrics.json"
    values = json.loads(metrics.read_text())
    values["test/acc"] = round(values["test/acc"] - 0.01, 6)
    metrics.write_text(json.dumps(values))
    done = check(tmp_path)
    assert done.returncode == 1 and "README.md" in done.stderr and "docs/results.md" in done.stderr
    # writing them again makes them agree, and quotes the new number
    subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path)], check=True, timeout=60)
    assert check(tmp_path).returncode == 0
    assert f"{values['test/acc']:.4f}" in (tmp_path / "README.md").read_text()


def test_the_reference_pages_stay_short() -> None:
    """Reference pages hold the current facts, one table per topic; earlier runs live in git
    (docs/history.md points at them), so the pages do not grow into a lab notebook."""
    for name, limit in {"results.md": 300, "serving.md": 400}.items():
        lines = len((REPO / "docs" / name).read_text(encoding="utf-8").splitlines())
        assert lines <= limit, f"docs/{name}: {lines} lines, over {limit}"
