"""Data-parallel training under torchrun (2 CPU processes, gloo): identical weights, rank 0 writes.

This file is also the worker: torchrun runs it as a script with the output directory as argument.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

TASKS = ("forecast", "generate")  # one sampler-sharded task and one stream-sharded (TBPTT) task


def _config(task: str, out_dir: Path) -> dict:
    model = {
        "forecast": {"window": 16, "min_history": 4, "horizon": 4, "hidden_size": 12, "num_layers": 1, "dropout": 0.2},
        "generate": {"embed_size": 8, "hidden_size": 16, "num_layers": 1, "dropout": 0.2},
    }[task]
    data = {"forecast": {"num_series": 8, "series_length": 60}, "generate": {"repeats": 60}}[task]
    train = {"batch_size": 4, "bptt_len": 16, "max_steps": 6, "eval_every": 3, "log_every": 1,
             "warmup_steps": 1, "num_threads": 1, "progress": False, "out_dir": str(out_dir / task)}
    return {"task": task, "data": data, "model": model, "train": train}


def _worker(out_dir: Path) -> None:
    import torch

    from training import loop, train

    for task in TASKS:
        model, result = train.run_task(train.RunConfig.from_dict(_config(task, out_dir)))
        rank, world = loop.world()
        torch.save({"state": model.state_dict(), "world": world, "steps": result.steps},
                   out_dir / f"{task}-rank{rank}.weights")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_keeps_ranks_identical(tmp_path):
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", __file__, str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for task in TASKS:
        r0 = torch.load(tmp_path / f"{task}-rank0.weights", weights_only=True)
        r1 = torch.load(tmp_path / f"{task}-rank1.weights", weights_only=True)
        assert r0["world"] == r1["world"] == 2 and r0["steps"] == r1["steps"] == 6
        assert r0["state"].keys() == r1["state"].keys()
        assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
        run_dir = tmp_path / task
        ckpt = torch.load(run_dir / "last.pt", weights_only=True)
        assert ckpt["world_size"] == 2 and ckpt["step"] == 6
        assert all(torch.equal(ckpt["model_state"][k], r0["state"][k]) for k in r0["state"])
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [(r["split"], r["step"]) for r in lines]
        assert len(steps) == len(set(steps)) == 6 + 2  # written once (by rank 0): 6 train + 2 val records
        assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "last.pt", "loss.png", "metrics.csv", "metrics.jsonl"]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
