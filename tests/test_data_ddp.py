"""Under DDP (2 CPU processes, gloo), the ranks' train shards of every epoch cover all rows, with at most
(processes - 1) rows repeated as padding and no other overlap (about 30 s on 2 busy cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from helpers import REPO, free_port

HELPER = REPO / "tests" / "helpers" / "ddp_shards.py"


def test_ranks_shards_cover_every_row_once_but_the_padding(sample_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for split in ("validation", "test"):
        (data / f"{split}.jsonl").write_text((sample_dir / f"{split}.jsonl").read_text())
    lines = (sample_dir / "train.jsonl").read_text().splitlines()
    odd = [*lines, *lines[:3]]  # 51 rows: 2 ranks need one padding row
    (data / "train.jsonl").write_text("\n".join(odd) + "\n")
    out, port = tmp_path / "drawn.json", str(free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, str(HELPER), str(data), str(tmp_path / "cache"), str(out)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
        )
        for rank in (0, 1)
    ]
    logs = [rank.communicate(timeout=300)[0] for rank in ranks]
    for rank, log in zip(ranks, logs, strict=True):
        assert rank.returncode == 0, log[-3000:]
    drawn = json.loads(out.read_text())
    n, world = drawn["rows"], 2
    assert n == len(odd)
    assert [(r["rank"], r["world"]) for r in drawn["ranks"]] == [(0, world), (1, world)]
    orders = []
    for epoch in range(3):
        shards = [r["epochs"][epoch] for r in drawn["ranks"]]
        assert [s["rows"] for s in shards] == [len(s["indices"]) for s in shards] == [26, 26]  # the loader
        counts = Counter(i for s in shards for i in s["indices"])
        assert set(counts) == set(range(n))  # every row, every epoch
        repeated = sum(c - 1 for c in counts.values())
        assert repeated == world * 26 - n == 1 <= world - 1  # the padding, and nothing else overlaps
        orders.append(shards[0]["indices"])
    assert orders[0] != orders[1] != orders[2]  # reshuffled each epoch
