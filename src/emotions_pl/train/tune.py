"""``tune``: an Optuna search over any ``fit`` flag, offline, with as many workers as there are machines.

A search-space YAML (``configs/tune/``) names the flags to vary, the pruner and the sampler. Every
trial is a real ``fit`` through the project's LightningCLI (``train.cli.run_cli``), in its own run folder
``<study dir>/trial_<number>`` with LightningCLI's resolved ``config.yaml``; ``OptunaPruning`` reports the
objective after each validation and stops a trial the pruner gives up on (``pruning.py``). The study lives in
``--storage``: SQLite in the study folder by default, or any RDB URL, so that workers on many machines
share one study. Each worker seeds its own sampler and records the seed in the study. The best trial's
resolved config is written to ``<study dir>/best.yaml`` (atomically), ready for ``fit --config``.

Optuna and Lightning are imported only when a search runs, so ``tune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import os
import socket
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError
from emotions_pl.files import atomic_write_text
from emotions_pl.train.space import PRUNERS, SAMPLERS, Space, check_point, fit_flags, load_space
from emotions_pl.train.storage import open_storage, shown_url

STUDIES_ROOT = Path("runs") / "tune"
BEST_FILE = "best.yaml"
SQLITE_FILE = "study.db"


# ---------------------------------------------------------------------------------------------------
# Optuna pieces: sampler and pruner (the storage: storage.py)


def _optuna_object(module: Any, spec: dict[str, Any], names: dict[str, str], what: str, **extra: Any) -> Any:
    kind = spec["type"]
    class_name = names.get(kind.lower(), kind)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise UserError(f"{what}: unknown type {kind!r} (use {', '.join(names)} or an optuna class name)")
    kwargs = {k: v for k, v in spec.items() if k != "type"} | extra
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise UserError(f"{what} {kind}: {error}") from None
    except ValueError as error:
        raise UserError(f"{what} {kind}: {str(error).splitlines()[0]}") from None


def make_sampler(space: Space, seed: int) -> Any:
    import optuna

    return _optuna_object(optuna.samplers, space.sampler, SAMPLERS, f"{space.path}: sampler", seed=seed)


def make_pruner(space: Space) -> Any:
    import optuna

    return _optuna_object(optuna.pruners, space.pruner, PRUNERS, f"{space.path}: pruner")


# ---------------------------------------------------------------------------------------------------
# Running fits in this process


@contextlib.contextmanager
def _own_argv() -> Iterator[None]:
    """LightningCLI warns when it gets both ``args`` and a command line; hide tune's own."""
    saved = sys.argv[:]
    sys.argv[1:] = []
    try:
        yield
    finally:
        sys.argv[:] = saved


class _Parsed(Exception):  # a signal, not an error
    def __init__(self, config: Any) -> None:
        self.config = config


def parse_fit(fit_args: list[str]) -> Any:
    """The ``fit`` config that ``fit_args`` resolve to, checked by the real parser; nothing is built.

    A bad flag or config prints fit's own ``error:`` line and exits 2, as ``fit`` would.
    """
    from emotions_pl.train.cli import EmotionsCLI, run_cli

    class ParseOnly(EmotionsCLI):
        def before_instantiate_classes(self) -> None:
            raise _Parsed(self.config[self.subcommand])

    with _own_argv():
        try:
            run_cli(ParseOnly, args=["fit", *fit_args])
        except _Parsed as parsed:
            return parsed.config
    raise AssertionError("LightningCLI returned without parsing")  # pragma: no cover


def _takes_flag(fit_args: list[str], key: str, param: Any) -> bool:
    """Whether ``fit`` parses ``--key=value`` though the resolved config has no such key: an argument
    of the last class in a list, e.g. ``trainer.callbacks.decay`` after ``--trainer.callbacks+=FILE``."""
    value = param.choices[0] if param.choices else param.low
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parse_fit([*fit_args, *fit_flags({key: value})])
    except SystemExit:
        return False
    return True


def check_space_flags(space: Space, config: Any, fit_args: list[str]) -> None:
    """Every key of the space must be a ``fit`` flag: a key of the resolved config, or one fit takes."""
    keys = list(config.keys())
    for key, param in space.params.items():
        if key not in config and not _takes_flag(fit_args, key, param):
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else " (see emotions-pl fit --print_config)"
            raise UserError(f"{space.path}: params.{key} is not a fit flag{hint}")


def one_device_args(config: Any, fit_args: list[str]) -> list[str]:
    """Each trial runs in this process on one device (a DDP launch would start tune again in every
    rank): ``--trainer.devices=1`` unless the fit flags name a single device themselves."""
    trainer = config.trainer
    devices = trainer.devices
    explicit = any(a == "--trainer.devices" or a.startswith("--trainer.devices=") for a in fit_args)
    single = not explicit or devices in (1, "1") or (isinstance(devices, list | tuple) and len(devices) == 1)
    if not single or trainer.num_nodes != 1:
        raise UserError(
            f"tune runs each trial in its own process on one device (got trainer.devices={trainer.devices}, "
            f"num_nodes={trainer.num_nodes}); start one tune worker per device instead"
        )
    return [] if explicit else ["--trainer.devices=1"]


def best_config(text: str, trial_dir: str, run_dir: Path, base: Any) -> str:
    """A trial's resolved config as a starting point for ``fit``: its run folder becomes ``run_dir``,
    the paths the CLI filled from the trial's folder are unset again (filled from ``run_dir``), and
    devices and precision are the experiment's again (tune ran on one device; null precision is
    resolved per machine, bf16 on capable GPUs)."""
    config = yaml.safe_load(text)
    trainer = config.get("trainer") or {}
    trainer["default_root_dir"] = str(run_dir)
    trainer["devices"] = base.trainer.devices
    trainer["precision"] = base.trainer.precision
    for callback in trainer.get("callbacks") or []:
        init_args = callback.get("init_args") if isinstance(callback, dict) else None
        for key, value in (init_args or {}).items():
            if isinstance(value, str) and Path(value).parent == Path(trial_dir):
                init_args[key] = None
    return yaml.safe_dump(config, sort_keys=False)


# ---------------------------------------------------------------------------------------------------
# The command


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("tune")
    parser.add_argument(
        "--space", required=True, type=Path, help="search-space YAML (configs/tune/*.yaml): flags, pruner"
    )
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        help="the experiment to start from (fit's --config; repeat to layer)",
    )
    parser.add_argument("--study-name", help="the study's name (default: the space file's name)")
    parser.add_argument(
        "--study-dir",
        type=Path,
        help=f"trial run folders and best.yaml (default: {STUDIES_ROOT}/<study name>)",
    )
    parser.add_argument(
        "--storage",
        help="an RDB URL for the study, shared by every worker (default: sqlite:///<study dir>/study.db); "
        "e.g. postgresql://user:pass@host/db for workers on many machines",
    )
    parser.add_argument("--n-trials", type=int, default=10, help="trials this worker runs (default: 10)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="base of the sampler seed; each worker adds its --worker-index, or a hash of host:pid",
    )
    parser.add_argument(
        "--worker-index", type=int, help="this worker's number: sampler seed = --seed + index (reproducible)"
    )
    parser.add_argument(
        "--enqueue",
        action="append",
        default=[],
        metavar="JSON",
        help="a point to try first, e.g. '{\"model.learning_rate\": 1e-9}' (skipped if already in the study)",
    )
    parser.add_argument(
        "fit_args",
        nargs=argparse.REMAINDER,
        metavar="-- FIT FLAGS",
        help="after --: flags for every trial's fit (e.g. -- --trainer.enable_progress_bar false)",
    )
    return parser


def worker_seed(seed: int, index: int | None) -> tuple[int, str, str]:
    """(sampler seed, worker name, how the seed was made)."""
    host = socket.gethostname()
    if index is not None:
        return seed + index, f"{host}:{index}", f"--seed {seed} + --worker-index {index}"
    name = f"{host}:{os.getpid()}"
    return (seed + zlib.crc32(name.encode())) % 2**31, name, f"--seed {seed} + crc32('{name}')"


def _point(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--enqueue {text}: not JSON ({error.msg})") from None


def _open_study(args: argparse.Namespace, space: Space, storage: Any, sampler: Any, pruner: Any) -> Any:
    import optuna

    try:
        study = optuna.create_study(
            storage=storage,
            study_name=args.study_name,
            direction=space.direction,
            sampler=sampler,
            pruner=pruner,
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=args.study_name, storage=storage, sampler=sampler, pruner=pruner)
        if study.direction.name.lower() != space.direction:
            raise UserError(
                f"study {args.study_name!r} {study.direction.name.lower()}s; {space.path} asks to "
                f"{space.direction} (use another --study-name)"
            ) from None
        return study, False
    study.set_user_attr("objective", space.objective)
    study.set_user_attr("space", str(space.path))
    for point in space.enqueue:  # the space's start points, once, by the worker that made the study
        study.enqueue_trial(point, skip_if_exists=True)
    return study, True


def _same_params(study: Any, trial: Any) -> int | None:
    """The number of an earlier trial (finished, pruned or running) with exactly these params."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    for other in study.get_trials(deepcopy=False, states=states):
        earlier = other.number < trial.number  # of two twins running at once, the later one yields
        if earlier and other.params == trial.params and "duplicate_of" not in other.user_attrs:
            return other.number
    return None


def _counts(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return counts


def write_best(study: Any, space: Space, study_dir: Path, base: Any) -> tuple[Path, Any] | None:
    """Write the best finished trial's config to ``<study dir>/best.yaml``; (path, trial), or None
    while no trial has finished."""
    from optuna.trial import TrialState

    done = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "config" in t.user_attrs
    ]
    if not done:
        return None
    pick = max if space.direction == "maximize" else min
    best = pick(done, key=lambda t: (t.value, -t.number))
    path = study_dir / BEST_FILE
    header = (
        f"# Best trial of study {study.study_name!r}: trial {best.number}, "
        f"{space.objective}={best.value:.4f}\n"
        f"# params: {json.dumps(best.params)}\n"
        f"# emotions-pl fit --config {path}\n"
    )
    text = best_config(best.user_attrs["config"], best.user_attrs["run_dir"], study_dir / "best", base)
    atomic_write_text(path, header + text)
    return path, best


def run(args: argparse.Namespace) -> int:
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tune prints its own line per trial
    if args.n_trials < 1:
        raise UserError(f"--n-trials must be at least 1, got {args.n_trials}")
    space = load_space(args.space)
    fit_args = list(args.fit_args)
    if fit_args[:1] == ["--"]:
        fit_args = fit_args[1:]
    config_args = [arg for config in args.config for arg in ("--config", config)]
    points = [check_point(space, _point(text), f"--enqueue {text}") for text in args.enqueue]

    args.study_name = args.study_name or space.path.stem
    study_dir = args.study_dir or STUDIES_ROOT / args.study_name
    url = args.storage or f"sqlite:///{(study_dir / SQLITE_FILE).resolve()}"
    if args.storage is None:
        study_dir.mkdir(parents=True, exist_ok=True)

    base = parse_fit([*config_args, *fit_args])  # a bad --config or fit flag fails here, as fit would
    base_args = [*config_args, *one_device_args(base, fit_args), *fit_args]
    check_space_flags(space, base, [*config_args, *fit_args])
    storage = open_storage(url)
    seed, worker, how = worker_seed(args.seed, args.worker_index)
    sampler, pruner = make_sampler(space, seed), make_pruner(space)
    study, created = _open_study(args, space, storage, sampler, pruner)
    study.set_user_attr(f"worker:{worker}", {"sampler_seed": seed, "how": how, "started": time.time()})
    for point in points:
        study.enqueue_trial(point, skip_if_exists=True)
    before = len(study.get_trials(deepcopy=False))
    print(
        f"tune: study {study.study_name!r} ({'new' if created else f'{before} trials so far'}) in "
        f"{shown_url(url)}; {space.direction} {space.objective}; trials in {study_dir}/trial_<n>"
    )
    print(f"tune: worker {worker}: sampler seed {seed} ({how})")

    def objective(trial: Any) -> float:
        from emotions_pl.train.cli import run_cli
        from emotions_pl.train.pruning import OptunaPruning

        params = {key: param.suggest(trial) for key, param in space.params.items()}
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("sampler_seed", seed)
        same = _same_params(study, trial)
        if same is not None:
            trial.set_user_attr("duplicate_of", same)
            print(f"tune: trial {trial.number}: same params as trial {same}; skipped")
            raise optuna.TrialPruned(f"duplicate of trial {same}")
        trial_dir = study_dir / f"trial_{trial.number}"
        trial.set_user_attr("run_dir", str(trial_dir))
        flags = fit_flags(params)
        print(f"tune: trial {trial.number}: {' '.join(flags)} -> {trial_dir}", flush=True)
        pruning = OptunaPruning(trial, space.objective)
        started = time.monotonic()
        try:
            with _own_argv():
                run_cli(
                    args=["fit", *base_args, f"--trainer.default_root_dir={trial_dir}", *flags],
                    callbacks=[pruning],
                )
        except SystemExit as exit_:  # the fit parser rejected a value; its error line is above
            raise UserError(f"trial {trial.number}: fit rejected {' '.join(flags)}") from exit_
        except optuna.TrialPruned as pruned:
            print(f"tune: trial {trial.number}: pruned ({pruned}) after {time.monotonic() - started:.0f} s")
            raise
        finally:
            if pruning.config_path is not None and pruning.config_path.is_file():
                trial.set_user_attr("config", pruning.config_path.read_text("utf-8"))
        value = pruning.best(space.direction)
        if value is None:
            raise UserError(f"trial {trial.number}: no finite {space.objective}; did validation run?")
        took = time.monotonic() - started
        print(f"tune: trial {trial.number}: {space.objective}={value:.4f} in {took:.0f} s")
        return value

    def after_trial(study: Any, trial: Any) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            write_best(study, space, study_dir, base)

    study.optimize(objective, n_trials=args.n_trials, timeout=args.timeout, callbacks=[after_trial])
    counts = _counts(study)
    print("tune: study now " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    written = write_best(study, space, study_dir, base)
    if written is None:
        print("tune: no trial has finished yet; no best config")
        return 0
    path, best = written
    print(f"tune: best trial {best.number}: {space.objective}={best.value:.4f} {json.dumps(best.params)}")
    print(f"tune: best config: {path} (emotions-pl fit --config {path})")
    return 0
