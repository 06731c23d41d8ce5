"""``tune``: the search space and its errors, and a real study: two worker processes sharing one SQLite
study of tiny fits, a pruned start point, one sampler seed per worker, a resume that repeats nothing,
and a best config that ``fit`` accepts."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from emotions_pl.errors import UserError
from emotions_pl.train import storage, tune
from helpers import REPO, run_main

TINY_SPACE = REPO / "configs" / "tune" / "tiny.yaml"
BAD_LR = 1e-9  # the start point configs/tune/tiny.yaml enqueues
WORDS = ("gloomy", "delighted", "adored", "furious", "terrified", "astonished")  # one per label
FILLERS = ("today", "at work", "this morning", "again", "with my friends", "about the news", "tonight")


def write_space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


# --- the search space, without training ------------------------------------------------------------


def test_the_shipped_spaces_load() -> None:
    minilm = tune.load_space(REPO / "configs" / "tune" / "minilm.yaml")
    assert (minilm.objective, minilm.direction) == ("val/f1_macro", "maximize")
    assert minilm.pruner == {"type": "median", "n_startup_trials": 4, "n_warmup_steps": 1}
    lr = minilm.params["model.learning_rate"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 2e-5, 3e-4, True)
    assert minilm.params["data.batch_size"].choices == (16, 32, 64)
    assert minilm.params["model.class_weights"].encoded  # a list choice travels as JSON text
    tiny = tune.load_space(TINY_SPACE)
    assert tiny.enqueue == [{"model.learning_rate": BAD_LR}]


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path: Path) -> None:
    space = tune.load_space(
        write_space(tmp_path, "params:\n  model.learning_rate: {type: float, low: 1e-5, high: 3e-4}\n")
    )
    assert space.params["model.learning_rate"].low == 1e-5  # PyYAML alone reads 1e-5 as a string


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("params: [oops\n", "not valid YAML (line 2)"),
        ("learning_rate: 1\n", "a search space needs 'params:'"),
        ("params: {a: 1}\nsampler2: tpe\n", "unknown key 'sampler2'"),
        (
            "params:\n  model.learning_rate: {type: floaty, low: 1, high: 2}\n",
            "type float, int or categorical",
        ),
        (
            "params:\n  model.learning_rate: {type: float, low: 3, high: 2}\n",
            "low (3.0) must be below high (2.0)",
        ),
        ("params:\n  model.learning_rate: {type: float, low: 1, high: 2, lg: true}\n", "unknown field 'lg'"),
        ("params:\n  data.batch_size: {type: int, low: 8, high: x}\n", "high must be a number"),
        ("params:\n  data.batch_size: [8, 16]\nobjective: f1\n", "objective must be a validation metric"),
        (
            "params:\n  data.batch_size: [8, 16]\nenqueue: [{data.max_length: 8}]\n",
            "not in the space's params",
        ),
    ],
)
def test_a_bad_space_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write_space(tmp_path, text)
    with pytest.raises(UserError) as error:
        tune.load_space(path)
    assert message in str(error.value) and str(error.value).startswith(str(path))
    assert "\n" not in str(error.value)


def test_a_bad_pruner_or_sampler_names_what_is_wrong(tmp_path: Path) -> None:
    space = tune.load_space(write_space(tmp_path, "params: {a: [1, 2]}\npruner: {type: medain}\n"))
    with pytest.raises(UserError, match="pruner: unknown type 'medain'"):
        tune.make_pruner(space)
    space = tune.load_space(write_space(tmp_path, "params: {a: [1, 2]}\npruner: {type: median, warmup: 1}\n"))
    with pytest.raises(UserError, match=r"pruner median: .*'warmup'"):
        tune.make_pruner(space)
    space = tune.load_space(
        write_space(tmp_path, "params: {a: [1, 2]}\nsampler: {type: tpe, n_startup: 1}\n")
    )
    with pytest.raises(UserError, match=r"sampler tpe: .*'n_startup'"):
        tune.make_sampler(space, seed=0)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "--storage not a url: Could not parse"),
        (
            "postgresql://tuner:s3cret@127.0.0.1:1/optuna",
            "--storage postgresql://tuner:***@127.0.0.1:1/optuna: ",
        ),
        ("sqlite:////no/such/folder/study.db", "unable to open database file"),
    ],
)
def test_a_bad_storage_url_is_one_line(url: str, message: str) -> None:
    with pytest.raises(UserError) as error:
        storage.open_storage(url)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert "s3cret" not in str(error.value)


def _open(url: str, answers: multiprocessing.Queue) -> None:
    try:
        storage.open_storage(url)
        answers.put("ok")
    except UserError as error:
        answers.put(str(error))


def test_workers_starting_together_on_a_new_sqlite_study_all_open_it(tmp_path: Path) -> None:
    # the race CI hit: each worker inserting the schema version (UNIQUE constraint failed); ~2 s a round
    # spawn, not fork: a forked child of this threaded test process can inherit a held lock and hang
    context = multiprocessing.get_context("spawn")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'study{round_}.db'}"
        answers = context.Queue()
        workers = [context.Process(target=_open, args=(url, answers)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert [answers.get(timeout=5) for _ in workers] == ["ok"] * 4


def test_a_dead_workers_trial_runs_again_with_its_params(tmp_path: Path) -> None:
    """A worker killed mid-trial leaves it RUNNING; once its heartbeat is stale the next worker fails it
    and Optuna queues the same params again (the storage's retry callback)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage.open_storage(url), study_name="s")
    dead = study.ask({"decay": optuna.distributions.CategoricalDistribution([0.99, 0.995])})
    study._storage.record_heartbeat(dead._trial_id)  # what optimize does; then the worker is killed
    later = storage.open_storage(url)
    later.grace_period = 0  # instead of waiting out the 180 s
    time.sleep(1.1)
    optuna.storages.fail_stale_trials(optuna.load_study(study_name="s", storage=later))
    trials = optuna.load_study(study_name="s", storage=later).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert trials[1].params == trials[0].params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[1]) == 0


def test_values_become_fit_flags() -> None:
    flags = tune.fit_flags(
        {"model.learning_rate": 1e-05, "data.batch_size": 16, "model.class_weights": [1.0, 2.0], "x": None}
    )
    assert flags == [
        "--model.learning_rate=1e-05",
        "--data.batch_size=16",
        "--model.class_weights=[1.0, 2.0]",
        "--x=null",
    ]


def test_an_unknown_flag_in_the_space_is_one_error_line(tmp_path: Path, capsys) -> None:
    path = write_space(tmp_path, "params:\n  model.learnin_rate: {type: float, low: 1e-5, high: 1e-4}\n")
    code = run_main(
        "tune",
        "--space",
        str(path),
        "--config",
        "configs/experiment/smoke.yaml",
        "--study-dir",
        str(tmp_path / "study"),
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"error: {path}: params.model.learnin_rate is not a fit flag; did you mean 'model.learning_rate'?\n"
    )
    assert not (tmp_path / "study" / "study.db").exists()  # nothing was started


def test_an_argument_of_an_added_callback_is_a_fit_flag() -> None:
    # configs/tune/ema.yaml searches the averaging callback's decay: no key of the resolved config
    # names it, yet fit takes it after the `+=` that adds the callback (the last list entry).
    space = tune.load_space(Path("configs/tune/ema.yaml"))
    args = ["--config", "configs/experiment/smoke.yaml", "--trainer.callbacks+=configs/callbacks/ema.yaml"]
    tune.check_space_flags(space, tune.parse_fit(args), args)
    with pytest.raises(UserError, match=r"params\.trainer\.callbacks\.decay is not a fit flag"):
        tune.check_space_flags(space, tune.parse_fit(args[:2]), args[:2])  # no averaging callback: no decay


# --- a real study ------------------------------------------------------------------------------------


def separable_data(folder: Path) -> Path:
    """Six labels, each with its own word: the tiny random-init model learns it within 2-3 epochs (the
    shipped sample is too hard for it to leave the one-class floor that soon, so no pruner could tell
    a learning trial from a dead one)."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for split, per_label in (("train", 40), ("validation", 8), ("test", 4)):
        rows = [
            {"text": f"i feel {word} {rng.choice(FILLERS)}", "label": label}
            for _ in range(per_label)
            for label, word in enumerate(WORDS)
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def tune_command(study_dir: Path, data: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "emotions_pl", "tune",
        "--space", str(TINY_SPACE),
        "--config", "configs/experiment/smoke.yaml",
        "--study-dir", str(study_dir),
        *extra,
        "--",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--data.source", str(data),
        "--data.batch_size", "16",
    ]  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"tune failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def seed_line(out: str) -> int:
    found = re.findall(r"^tune: worker \S+: sampler seed (\d+) \(", out, flags=re.MULTILINE)
    assert len(found) == 1, out[-3000:]
    return int(found[0])


@pytest.mark.slow  # 3-4 min here: three tune processes, five tiny fits
def test_two_workers_share_a_study_prune_resume_and_write_the_best_config(tmp_path: Path, capsys) -> None:
    data = separable_data(tmp_path / "data")
    study_dir = tmp_path / "study"
    storage = f"sqlite:///{study_dir / 'study.db'}"
    popen = {
        "cwd": REPO,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.STDOUT,
        "text": True,
        "env": os.environ,
    }

    # two workers at once, two trials each, on the default SQLite study in the study folder
    started = time.monotonic()
    workers = [subprocess.Popen(tune_command(study_dir, data, "--n-trials", "2"), **popen) for _ in range(2)]
    outs = [finish(w) for w in workers]
    both = time.monotonic() - started

    study = optuna.load_study(study_name="tiny", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 4
    states = [t.state.name for t in trials]
    bad = [t for t in trials if t.params["model.learning_rate"] == BAD_LR]
    assert len(bad) == 1 and bad[0].state.name == "PRUNED"  # the enqueued start point, stopped
    assert len(bad[0].intermediate_values) == 2  # at its second validation (n_warmup_steps: 1)
    assert "COMPLETE" in states

    # each worker its own sampler seed: printed, and recorded in the study and on its trials
    seeds = [seed_line(out) for out in outs]
    assert seeds[0] != seeds[1]
    recorded = {v["sampler_seed"] for k, v in study.user_attrs.items() if k.startswith("worker:")}
    assert recorded == set(seeds)
    assert {t.user_attrs["sampler_seed"] for t in trials} == set(seeds)

    # every trial a real fit in its own folder, with LightningCLI's resolved config
    for trial in trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == study_dir / f"trial_{trial.number}"
        config = yaml.safe_load((run_dir / "logs" / "version_0" / "config.yaml").read_text())
        assert config["model"]["learning_rate"] == pytest.approx(trial.params["model.learning_rate"])
        assert config["trainer"]["max_epochs"] == trial.params["trainer.max_epochs"]
        assert config["trainer"]["default_root_dir"] == str(run_dir)
        if trial.state.name == "COMPLETE":
            assert (run_dir / "run.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()

    # resume: the same storage, the start point asked for again; one more trial, nothing repeated
    started = time.monotonic()
    resumed = subprocess.Popen(
        tune_command(
            study_dir,
            data,
            "--n-trials",
            "1",
            "--storage",
            storage,
            "--enqueue",
            '{"model.learning_rate": 1e-9}',
        ),
        **popen,
    )
    out = finish(resumed)
    again = time.monotonic() - started
    assert "(4 trials so far)" in out
    trials = study.get_trials()
    assert len(trials) == 5
    assert sum(t.params["model.learning_rate"] == BAD_LR for t in trials) == 1
    complete = [json.dumps(t.params, sort_keys=True) for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) >= 1
    assert seed_line(out) not in seeds

    # the best trial's config, ready for fit
    best = study.best_trial
    best_file = study_dir / "best.yaml"
    assert f"tune: best config: {best_file} (emotions-pl fit --config {best_file})" in out
    assert f"trial {best.number}" in best_file.read_text().splitlines()[0]
    capsys.readouterr()
    assert run_main("fit", "--config", str(best_file), "--print_config") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["learning_rate"] == pytest.approx(best.params["model.learning_rate"])
    assert printed["trainer"]["default_root_dir"] == str(study_dir / "best")
    assert printed["trainer"]["devices"] == 1 and printed["trainer"]["precision"] is None
    counts = {s: states.count(s) for s in set(states)}
    print(f"two workers: {counts} in {both:.0f} s; resume: 1 more trial in {again:.0f} s")
