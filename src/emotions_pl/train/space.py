"""A ``tune`` search space: the YAML that names the ``fit`` flags to vary, their distributions, the
sampler and the pruner, read and checked without Optuna (every problem a ``UserError`` naming the
file and key), and a trial's point turned back into ``fit`` flags."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emotions_pl.errors import UserError

OBJECTIVE = "val/f1_macro"
DIRECTIONS = ("maximize", "minimize")
SPACE_KEYS = {"objective", "direction", "sampler", "pruner", "enqueue", "params"}
PARAM_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
# Short names for optuna's samplers and pruners; their class names work too.
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "gp": "GPSampler", "qmc": "QMCSampler"}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "threshold": "ThresholdPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "wilcoxon": "WilcoxonPruner",
    "none": "NopPruner",
}
PRIMITIVE = (type(None), bool, int, float, str)


# ---------------------------------------------------------------------------------------------------
# The search space


@dataclass(frozen=True)
class Param:
    """One ``fit`` flag and its distribution; non-scalar categorical choices travel as JSON text."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    encoded: bool = False  # choices are JSON strings (lists, dicts: class weights and the like)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        value = trial.suggest_categorical(self.key, self.choices)
        return json.loads(value) if self.encoded else value


@dataclass
class Space:
    path: Path
    params: dict[str, Param]
    objective: str = OBJECTIVE
    direction: str = "maximize"
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    enqueue: list[dict[str, Any]] = field(default_factory=list)


def _number(path: Path, key: str, name: str, value: Any, kind: str) -> float | int:
    try:
        number = float(value)  # PyYAML reads 1e-5 (no dot) as a string
    except (TypeError, ValueError):
        raise UserError(f"{path}: params.{key}.{name} must be a number, got {value!r}") from None
    if kind == "int":
        if number != int(number):
            raise UserError(f"{path}: params.{key}.{name} must be a whole number, got {value!r}")
        return int(number)
    return number


def _param(path: Path, key: str, spec: Any) -> Param:
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict) or spec.get("type") not in PARAM_KEYS:
        raise UserError(
            f"{path}: params.{key} must be a mapping with type float, int or categorical "
            f"(e.g. {{type: float, low: 1e-5, high: 3e-4, log: true}}) or a list of choices"
        )
    kind = spec["type"]
    unknown = sorted(set(spec) - PARAM_KEYS[kind])
    if unknown:
        allowed = ", ".join(sorted(PARAM_KEYS[kind] - {"type"}))
        raise UserError(f"{path}: params.{key}: unknown field {unknown[0]!r} for type {kind} (use {allowed})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{path}: params.{key}.choices must be a non-empty list")
        encoded = not all(isinstance(c, PRIMITIVE) for c in choices)
        if encoded:
            choices = [json.dumps(c, sort_keys=True) for c in choices]
        return Param(key, kind, choices=tuple(choices), encoded=encoded)
    for name in ("low", "high"):
        if name not in spec:
            raise UserError(f"{path}: params.{key} needs {name} (type {kind})")
    low, high = (_number(path, key, n, spec[n], kind) for n in ("low", "high"))
    step = None if spec.get("step") is None else _number(path, key, "step", spec["step"], kind)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{path}: params.{key}.log must be true or false")
    if not low < high:
        raise UserError(f"{path}: params.{key}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise UserError(f"{path}: params.{key}: a log scale needs low > 0")
    if log and step is not None and kind == "float":
        raise UserError(f"{path}: params.{key}: use log or step, not both")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _spec(path: Path, name: str, value: Any, names: dict[str, str]) -> dict[str, Any]:
    if value is None:
        value = {"type": "none"} if name == "pruner" else {"type": "tpe"}
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        choices = ", ".join(names)
        raise UserError(f"{path}: {name} must be a mapping with a type ({choices} or an optuna class name)")
    return dict(value)


def load_space(path: Path) -> Space:
    """Read and check a search-space YAML; every problem is a ``UserError`` naming the file and key."""
    try:
        raw = yaml.safe_load(Path(path).read_text("utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise UserError(f"{path}: a search space needs 'params:', a mapping of fit flags to distributions")
    unknown = sorted(set(raw) - SPACE_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (use {', '.join(sorted(SPACE_KEYS))})")
    params = {str(key): _param(path, str(key), spec) for key, spec in raw["params"].items()}
    objective = raw.get("objective", OBJECTIVE)
    if not isinstance(objective, str) or not objective.startswith("val/"):
        raise UserError(f"{path}: objective must be a validation metric (val/...), got {objective!r}")
    direction = raw.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise UserError(f"{path}: direction must be maximize or minimize, got {direction!r}")
    enqueue = raw.get("enqueue") or []
    if not isinstance(enqueue, list):
        raise UserError(f"{path}: enqueue must be a list of {{flag: value}} mappings")
    space = Space(
        Path(path),
        params,
        objective=objective,
        direction=direction,
        sampler=_spec(path, "sampler", raw.get("sampler"), SAMPLERS),
        pruner=_spec(path, "pruner", raw.get("pruner"), PRUNERS),
    )
    space.enqueue = [check_point(space, point, f"{path}: enqueue") for point in enqueue]
    return space


def check_point(space: Space, point: Any, where: str) -> dict[str, Any]:
    """A start point to enqueue: values for flags of the space, in optuna's terms."""
    if not isinstance(point, dict) or not point:
        raise UserError(f"{where}: a point is a non-empty mapping of flags to values, got {point!r}")
    for key in point:
        if key not in space.params:
            raise UserError(f"{where}: {key!r} is not in the space's params ({', '.join(space.params)})")
    return {
        key: json.dumps(value, sort_keys=True) if space.params[key].encoded else value
        for key, value in point.items()
    }


def flag_value(value: Any) -> str:
    """A value as LightningCLI reads it on the command line (YAML: JSON for lists, dicts, null, bools)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def fit_flags(params: dict[str, Any]) -> list[str]:
    return [f"--{key}={flag_value(value)}" for key, value in params.items()]
