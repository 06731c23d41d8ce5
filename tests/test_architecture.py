"""The layout's rules, checked on the source: imports flow train -> artifact -> serve -> monitor, shared
modules import no stage, no import cycle (lazy imports too), one module writes temp-and-rename, and the
tools that do not train never import Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "src" / "emotions_pl"
STAGES = ["train", "artifact", "serve", "monitor"]
ENTRY = {"__main__", "completion"}  # dispatch to every stage by design


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n.startswith("emotions_pl")}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path: Path) -> None:
    relative = path.relative_to(PACKAGE)
    if relative.stem in ENTRY and len(relative.parts) == 1:
        return
    own = relative.parts[0] if len(relative.parts) > 1 else None  # None: a shared module or patches/
    allowed = STAGES[: STAGES.index(own) + 1] if own in STAGES else []
    for module in imported_modules(path):
        stage = stage_of(module)
        assert stage is None or stage in allowed, f"{relative} imports {module} (a later stage)"


def module_name(path: Path) -> str:
    parts = ("emotions_pl", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle() -> None:
    # Every import counts, the ones inside functions too (a lazy import hides a cycle, it does not
    # remove it); `from pkg import name` counts pkg.name when that is a module.
    modules = {module_name(path): path for path in sources()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                edges.add(node.module)
                edges |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = [*trail[trail.index(name) :], name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for edge in sorted(graph[name]):
            visit(edge, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


MAX_LINES = 400  # a module past this holds more than one job: split it at its seams


def test_no_module_is_over_the_line_cap() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long


def test_only_files_py_renames_into_place() -> None:
    writers = [
        p.relative_to(PACKAGE)
        for p in sources()
        if "os.replace(" in p.read_text() or "os.rename(" in p.read_text()
    ]
    assert writers == [Path("files.py")]


def test_nothing_reads_a_logger_file() -> None:
    readers = [
        p.relative_to(PACKAGE)
        for p in sources()
        if "metrics.csv" in p.read_text() or "version_*" in p.read_text()
    ]
    assert readers == []


NON_TRAINING = [
    "emotions_pl.monitor.drift",
    "emotions_pl.serve.options",
    "emotions_pl.serve.server",
    "emotions_pl.artifact.export",
    "emotions_pl.artifact.checkpoint",
    "emotions_pl.artifact.prune",
    "emotions_pl.monitor.evaluate",
    "emotions_pl.monitor.robustness",
]
LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")


def test_tools_that_do_not_train_never_import_lightning() -> None:
    probe = (
        f"import sys, importlib; [importlib.import_module(m) for m in {NON_TRAINING!r}]; "
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {LIGHTNING!r}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_one_prediction_record_everywhere() -> None:
    from emotions_pl import schema
    from emotions_pl.serve.contract import Prediction

    probs = [0.1, 0.5, 0.1, 0.1, 0.1, 0.1]
    record = schema.prediction(schema.LABELS, probs)
    assert record == {"label": "joy", "score": 0.5, "scores": dict(zip(schema.LABELS, probs, strict=True))}
    assert Prediction(**record).model_dump() == record  # the server's response model is the same record
