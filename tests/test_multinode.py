"""The multi-node command of docs/multi-gpu.md, tried as two nodes on one host: two torchrun launches of one process
each join one c10d rendezvous and train as one world of 2 (gloo on the CPU)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

from conftest import tiny_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_launches_join_one_rendezvous(tmp_path, cache):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
              "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{_free_port()}", "--rdzv_id", "wubugen-test",
              "-m", "wubugen", *tiny_args(run, cache, "--max_steps", "4", "--device", "cpu")]
    nodes = [subprocess.Popen(launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-2000:] for o in outs)
    said = [o for o in outs if "wubugen train:" in o]
    assert len(said) == 1  # only global rank 0 speaks and writes
    # a world of 2: the windows are shared between the ranks (batch 2 per rank, the tiny preset's)
    m = re.search(r"(\d+) training windows, \d+ validation windows, (\d+) batches/epoch", said[0])
    assert m and int(m[2]) == int(m[1]) // (2 * 2)
    assert (run / "last.json").exists() and (run / "summary.json").exists()
