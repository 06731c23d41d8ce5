"""A validation sweep's trials as JSON for the docs: a ``tune`` study (``runs/tune/<name>/study.db`` by
default) -> ``results/tune/<name>.json`` (number, state, params, objective value, minutes), written
atomically, so it can be run after each trial of a long sweep and committed as it grows.

    python -m scripts.experiments.sweep_json ema        # configs/tune/ema.yaml's study
    python -m scripts.experiments.sweep_json distill --storage sqlite:///elsewhere/study.db

``scripts/docs_tables.py`` writes the sweep tables of docs/results.md from these files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna

from emotions_pl.files import atomic_write_text

REPO = Path(__file__).resolve().parents[2]


def trials(name: str, storage: str) -> dict:
    study = optuna.load_study(study_name=name, storage=storage)
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "value": t.value,
            "minutes": round(t.duration.total_seconds() / 60, 1) if t.duration else None,
        }
        for t in study.trials
    ]
    return {"study": name, "objective": study.user_attrs.get("objective"), "trials": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="the study's name (its space file's stem)")
    parser.add_argument("--storage", help="default: sqlite:///runs/tune/<name>/study.db")
    parser.add_argument("--output", type=Path, help="default: results/tune/<name>.json")
    args = parser.parse_args()
    storage = args.storage or f"sqlite:///{REPO / 'runs' / 'tune' / args.name / 'study.db'}"
    output = args.output or REPO / "results" / "tune" / f"{args.name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(trials(args.name, storage), indent=1) + "\n")
    print(f"{args.name}: {output}")


if __name__ == "__main__":
    main()
