"""The server's defaults without a server: the variant it picks, its threads, how it collects a batch, the
settings the flags become, and how serve/ is laid out."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import queue
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from emotions_pl.artifact.predictor import VARIANT_FILES
from emotions_pl.serve import options


def _folder(tmp_path: Path, accuracies: dict[str, float | None], present: tuple[str, ...] = ()) -> tuple:
    present = present or tuple(accuracies)
    for variant in present:
        (tmp_path / VARIANT_FILES[variant]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / VARIANT_FILES[variant]).write_bytes(b"")
    info = {
        "variants": {
            v: ({"test": {"accuracy": a, "f1_macro": a}} if a is not None else {})
            for v, a in accuracies.items()
        }
    }
    return tmp_path, info


@pytest.mark.parametrize(
    ("accuracies", "chosen", "said"),
    [
        (
            {"fp32": 0.9330, "onnx": 0.9330, "int8": 0.9305},
            "int8",
            "int8 is the fastest variant in the folder",
        ),
        ({"fp32": 0.9330, "onnx": 0.9330, "int8": 0.9280}, "int8", "(+0.50 points)"),  # exactly at the floor
        ({"fp32": 0.9330, "onnx": 0.9330, "int8": 0.9200}, "onnx", "int8: 0.9200, 1.30 points below fp32"),
        ({"fp32": 0.9330, "onnx": 0.9100, "int8": 0.9000}, "fp32", "no faster variant is within 0.5 points"),
        ({"fp32": 0.9330, "onnx": None, "int8": 0.9400}, "int8", "better than fp32"),
        ({"fp32": None, "onnx": 0.9330, "int8": 0.9330}, "fp32", "records no test accuracy per variant"),
        ({"fp32": 0.9330, "int8": None, "onnx": 0.9330}, "onnx", "int8: no recorded accuracy"),
    ],
)
def test_auto_variant_is_the_fastest_within_half_a_point(
    tmp_path: Path, accuracies: dict, chosen: str, said: str
) -> None:
    folder, info = _folder(tmp_path, accuracies)
    variant, why = options.choose_variant(folder, info)
    if said == "better than fp32":
        assert variant == chosen and "(-0.70 points)" in why
        return
    assert variant == chosen and said in why, why


def test_auto_variant_skips_a_variant_whose_file_is_missing(tmp_path: Path) -> None:
    folder, info = _folder(tmp_path, {"fp32": 0.93, "onnx": 0.93, "int8": 0.93}, present=("fp32", "onnx"))
    assert options.choose_variant(folder, info)[0] == "onnx"


def test_no_recorded_accuracies_fall_back_to_fp32_and_say_so(tmp_path: Path) -> None:
    variant, why = options.choose_variant(*_folder(tmp_path, {"fp32": None, "int8": None}))
    assert variant == "fp32" and "export with --data DIR" in why


def test_default_threads_use_every_core_split_between_workers() -> None:
    assert options.default_threads(2, 1, "int8") == 2
    assert options.default_threads(2, 2, "fp32") == 1
    assert options.default_threads(8, 3, "onnx") == 2
    assert options.default_threads(1, 4, "int8") == 1


def test_openmp_waiting_is_set_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in options.OPENMP_ENV:
        monkeypatch.delenv(name, raising=False)
    options.set_openmp_waiting()
    assert {name: os.environ[name] for name in options.OPENMP_ENV} == options.OPENMP_ENV
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    options.set_openmp_waiting()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in os.environ


@pytest.mark.parametrize(
    ("cpu_max", "cap"), [("max 100000", None), ("150000 100000", 2), ("100000 100000", 1)]
)
def test_available_cores_honour_a_cgroup_quota(tmp_path: Path, cpu_max: str, cap: int | None) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    unlimited = options.available_cores(str(tmp_path / "missing"))
    got = options.available_cores(str(tmp_path / "cpu.max"))
    assert got == (unlimited if cap is None else min(unlimited, cap))


def _loop_and_api(batch_timeout: float, max_batch_size: int = 8) -> tuple:
    from emotions_pl.serve.worker import OpportunisticLoop

    loop = OpportunisticLoop()
    loop._restart_workers = False
    api = SimpleNamespace(batch_timeout=batch_timeout, max_batch_size=max_batch_size, request_timeout=30)
    return loop, api


def _item(uid: str) -> tuple:
    return (0, uid, time.monotonic(), {"text": uid})


def test_opportunistic_batching_takes_what_is_queued_without_waiting() -> None:
    loop, api = _loop_and_api(batch_timeout=0.0, max_batch_size=3)
    requests: queue.Queue = queue.Queue()
    for uid in "abcd":
        requests.put(_item(uid))
    start = time.perf_counter()
    payloads, timed_out = loop.get_batch_requests(api, requests, transport=None)
    assert [uid for _, uid, _ in payloads] == ["a", "b", "c"] and timed_out == []  # capped at the batch size
    payloads, _ = loop.get_batch_requests(api, requests, transport=None)
    assert [uid for _, uid, _ in payloads] == ["d"]  # a lone request goes at once
    assert time.perf_counter() - start < 0.05


def test_opportunistic_batching_blocks_on_an_empty_queue_instead_of_spinning() -> None:
    loop, api = _loop_and_api(batch_timeout=0.0)
    requests: queue.Queue = queue.Queue()
    threading.Timer(0.2, requests.put, args=(_item("late"),)).start()
    cpu, start = time.process_time(), time.perf_counter()
    payloads, _ = loop.get_batch_requests(api, requests, transport=None)
    assert [uid for _, uid, _ in payloads] == ["late"]
    assert 0.15 < time.perf_counter() - start < 1.0
    assert time.process_time() - cpu < 0.05  # it slept in get(), it did not poll


def test_a_batch_timeout_waits_for_more_only_after_the_first_request() -> None:
    loop, api = _loop_and_api(batch_timeout=0.3)
    requests: queue.Queue = queue.Queue()
    requests.put(_item("first"))
    threading.Timer(0.1, requests.put, args=(_item("second"),)).start()
    start = time.perf_counter()
    payloads, _ = loop.get_batch_requests(api, requests, transport=None)
    assert [uid for _, uid, _ in payloads] == ["first", "second"]
    assert 0.25 < time.perf_counter() - start < 1.0


def test_a_request_that_waited_too_long_is_timed_out() -> None:
    loop, api = _loop_and_api(batch_timeout=0.0)
    api.request_timeout = 0.01
    requests: queue.Queue = queue.Queue()
    requests.put((0, "old", time.monotonic() - 1, {}))
    payloads, timed_out = loop.get_batch_requests(api, requests, transport=None)
    assert payloads == [] and timed_out == [(0, "old")]


@pytest.mark.parametrize(
    ("text", "blank"),
    [
        ("", True),
        (" \t\n\r\v\f", True),
        ("\u3000\ufeff\u00a0\u2028\u200a", True),
        ("\x1e", False),
        ("\x85", False),
        ("\u200b", False),
        ("  ok ", False),
    ],
)
def test_blank_means_json_schema_white_space(text: str, blank: bool) -> None:
    """The server's "not blank" is the schema's pattern, as JSON Schema (ECMA-262) reads it."""
    from emotions_pl.serve.contract import check_text

    if blank:
        with pytest.raises(ValueError, match="empty or only whitespace"):
            check_text(text)
    else:
        assert check_text(text) == text


def test_a_lone_surrogate_is_replaced_not_a_500() -> None:
    from emotions_pl.serve.contract import check_text

    assert check_text("ok \ud800") == "ok ?"


def test_the_page_is_package_data() -> None:
    """Every file of serve/ui/ matches a package-data glob, so an installed wheel has the page."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = root / "src" / "emotions_pl"
    files = [p.relative_to(package).as_posix() for p in (package / "serve" / "ui").iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs["emotions_pl"]) for f in files), files


def _settings(tmp_path: Path, *flags: str, info: dict | None = None) -> tuple:
    (tmp_path / "export_info.json").write_text(json.dumps(info or {"labels": [], "max_length": 8}))
    args = options.build_parser().parse_args(["--model", str(tmp_path), *flags])
    before = dict(vars(args))
    return options.make_settings(args), args, before


def test_the_flags_become_frozen_settings_and_the_namespace_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", "k")
    settings, args, before = _settings(
        tmp_path, "--threads", "3", "--port", "8123", "--api-key-env", "MY_KEY"
    )
    assert vars(args) == before  # nothing written back into argparse's namespace
    assert (settings.variant, settings.threads, settings.port, settings.api_key) == ("fp32", 3, 8123, "k")
    assert settings.said == ("variant fp32 (auto): " + settings.variant_reason,)  # threads were given
    assert "'k'" not in repr(settings)  # the key is not printed with the settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.variant = "int8"  # type: ignore[misc]


def test_settings_say_what_was_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(options.API_KEY_ENV, raising=False)
    settings, _, _ = _settings(tmp_path, "--variant", "onnx", "--workers-per-device", "2")
    cores = options.available_cores()
    assert settings.variant_reason == "chosen with --variant" and settings.api_key is None
    assert settings.threads == options.default_threads(cores, 2, "onnx")
    assert settings.said == (
        f"threads {settings.threads} per inference worker (auto: {cores} cores, 2 workers)",
    )


SERVE = Path(__file__).resolve().parents[1] / "src" / "emotions_pl" / "serve"


def _serve_imports(path: Path) -> set[str]:
    """The serve modules a module imports, at the top or in a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {n.split(".")[2] for n in names if n.startswith("emotions_pl.serve.")} & {
        p.stem for p in SERVE.glob("*.py")
    }


def test_serve_modules_import_no_cycle_and_the_server_never_imports_options() -> None:
    graph = {p.stem: _serve_imports(p) - {p.stem} for p in SERVE.glob("*.py")}
    assert "options" not in set().union(*(deps for name, deps in graph.items() if name != "options"))
    assert graph["options"] <= {"settings", "server"}  # server: only run()'s hand-over of the settings
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for dep in graph[name]:
                visit(dep, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())


def test_no_serve_module_is_over_400_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in SERVE.glob("*.py")}
    assert max(sizes.values()) <= 400, sizes
