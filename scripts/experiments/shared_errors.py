"""What limits the test score: the test rows that every model gets wrong, over the committed predictions.

    python -m scripts.experiments.shared_errors --data ../shared/data/emotion \\
        --model head=results/seeds/head.json --model ema=results/seeds/ema.json \\
        --model distill=results/seeds/distill.json --model distill_ema=results/seeds/distill_ema.json \\
        --model mpnet=results/mpnet/predictions.csv

Each ``--model NAME=SPEC`` is a ``compare`` side (a seed study's JSON, a predictions file, a comma list);
its members are read through ``compare`` and checked to hold the data's rows. A row that no member of any
model gets right is a shared error: a different recipe, seed or a 5x larger model did not fix it, so it is
most likely an ambiguous or mislabelled text (the data report counts 51 texts that carry two labels). The
accuracy if every other row were right is the ceiling of what these models could reach together. Per class:
its rows and its shared errors, with the label most members give them. Writes
``results/compare/shared_errors.json`` (``scripts/docs_tables.py`` renders it into docs/results.md).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from emotions_pl import tables
from emotions_pl.files import atomic_write_text
from emotions_pl.monitor.compare import members, read_predictions_file
from emotions_pl.schema import LABELS

OUTPUT = Path("results") / "compare" / "shared_errors.json"
EXAMPLES = 8  # shared errors quoted in the JSON, shortest texts first


def shared_errors(data: Path, models: dict[str, str]) -> dict:
    texts, targets = tables.read_split(tables.find_split_file(data, "test"), LABELS, "test")
    target = np.asarray(targets)
    files = {name: members(spec) for name, spec in models.items()}
    # rows x members: the predicted label index of every member
    predicted = np.stack(
        [
            np.asarray(read_predictions_file(Path(f), texts, targets, LABELS))
            for paths in files.values()
            for f in paths
        ],
        axis=1,
    )
    right = predicted == target[:, None]
    missed = ~right.any(axis=1)
    # the label most members give a shared-error row: what the text reads as to every model
    voted = np.array([np.bincount(row, minlength=len(LABELS)).argmax() for row in predicted])
    pairs = Counter((LABELS[a], LABELS[v]) for a, v in zip(target[missed], voted[missed], strict=True))
    rows = len(target)
    order = sorted(np.flatnonzero(missed), key=lambda k: len(texts[k]))[:EXAMPLES]
    return {
        "models": files,
        "rows": rows,
        "members": predicted.shape[1],
        "member_accuracy": {"min": float(right.mean(0).min()), "max": float(right.mean(0).max())},
        "missed_by_all": int(missed.sum()),
        "missed_by_any": int((~right.all(axis=1)).sum()),
        "ceiling_accuracy": 1 - float(missed.mean()),
        "by_label": {
            label: {"rows": int((target == k).sum()), "missed_by_all": int(missed[target == k].sum())}
            for k, label in enumerate(LABELS)
        },
        "pairs": [{"actual": a, "read_as": v, "rows": n} for (a, v), n in pairs.most_common()],
        "examples": [
            {"text": texts[k], "actual": LABELS[target[k]], "read_as": LABELS[voted[k]]} for k in order
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="data folder with the test split")
    parser.add_argument("--model", action="append", required=True, help="NAME=SPEC (a compare side)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    models = dict(spec.split("=", 1) for spec in args.model)
    result = shared_errors(args.data, models)
    atomic_write_text(args.output, json.dumps(result, indent=1) + "\n")
    print(
        f"{result['missed_by_all']} of {result['rows']} test rows wrong for all {result['members']} models "
        f"(ceiling accuracy {result['ceiling_accuracy']:.4f}); {args.output}"
    )


if __name__ == "__main__":
    main()
