"""What the trainer promises when things go wrong (docs/reliability.md): SIGINT/SIGTERM save the step reached and resume
bit for bit, resume rules for changed options, the run-dir lock, OS errors as one line with the last checkpoint
intact, bad devices, malformed and corrupt checkpoints, bounded sampling."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, tiny_args
from wubugen import checkpoint as ckpt
from wubugen.cli import main

FLAGS = ["--max_steps", "16", "--log_interval", "4", "--q_controller_enabled", "--q_control_interval", "2",
         "--lambda_kl_update_interval", "2", "--ema_decay", "0.9", "--val_interval", "5", "--augment_flip"]


def weights_digest(path: Path) -> str:
    w = load_file(str(path))
    h = hashlib.sha256()
    for k in sorted(w):
        h.update(k.encode())
        h.update(w[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def last_step(run: Path) -> int:
    return json.loads((run / "last.json").read_text())["step"]


def last_weights(run: Path) -> Path:
    return run / json.loads((run / "last.json").read_text())["checkpoint"] / "weights.safetensors"


def no_leftovers(run: Path) -> bool:
    return not any(p.name.startswith((".tmp-", ".trash-")) for p in run.iterdir())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache) -> Path:
    """The uninterrupted run the interrupted ones must equal."""
    run = tmp_path_factory.mktemp("full") / "run"
    assert main(tiny_args(run, cache, *FLAGS)) == 0
    return run


# ---------------------------------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------------------------------
SIGNALLER = textwrap.dedent("""
    import os, signal, sys, time
    import wubugen.train.step as step_mod
    from wubugen.cli import main
    real = step_mod.StepRunner.run
    calls = {"n": 0}
    at, sig, twice = int(os.environ["SIGNAL_AT"]), getattr(signal, os.environ["SIGNAL"]), os.environ.get("TWICE")
    def run(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == at:  # the signal comes while step `at` runs
            os.kill(os.getpid(), sig)
            if twice:
                time.sleep(0.7)
                os.kill(os.getpid(), sig)
        return real(self, *a, **k)
    step_mod.StepRunner.run = run
    sys.exit(main(sys.argv[1:]))
""")


def run_signalled(tmp_path: Path, args: list[str], sig: str, at: int, twice: bool = False) -> subprocess.CompletedProcess:
    script = tmp_path / "signaller.py"
    script.write_text(SIGNALLER)
    env = {**os.environ, "SIGNAL_AT": str(at), "SIGNAL": sig, **({"TWICE": "1"} if twice else {})}
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("sig,at", [("SIGINT", 11), ("SIGTERM", 7)])  # 11: an epoch's last step; 7: mid-epoch
def test_signal_saves_the_step_reached_and_resume_is_bitwise_exact(tmp_path, cache, full_run, sig, at):
    run = tmp_path / "run"
    proc = run_signalled(tmp_path, tiny_args(run, cache, *FLAGS), sig, at)
    code = 128 + getattr(signal, sig)
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "stopped at step" in line]
    assert lines == [f"wubugen: {sig}: stopped at step {at}, checkpoint {run}/step_{at:08d} written; continue with: "
                     f"wubugen train --resume {run}"]
    assert last_step(run) == at and no_leftovers(run) and not (run / "run.lock").exists()
    assert ckpt.load_checkpoint(run).step == at
    # --resume alone: the run's own stored options (preset, cache, flags), written into the run it resumes
    assert main(["train", "--resume", str(run)]) == 0
    assert last_step(run) == 16
    assert weights_digest(last_weights(full_run)) == weights_digest(last_weights(run))
    # and the logs: every loss mean, learning rate and Q-controller value, the windows running across the stop
    assert logged(run) == logged(full_run)


def logged(run: Path) -> list:
    return [(r["step"], r["values"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_second_ctrl_c_aborts_at_once_and_leaves_no_partial_checkpoint(tmp_path, cache):
    run = tmp_path / "run"
    proc = run_signalled(tmp_path, tiny_args(run, cache, "--max_steps", "16", "--save_interval", "3"), "SIGINT", 5,
                         twice=True)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "second Ctrl-C: aborting now" in proc.stderr and "stopped at step" not in proc.stderr
    assert last_step(run) == 3 and not (run / "step_00000005").exists() and no_leftovers(run)


DDP_SIGNAL = textwrap.dedent("""
    import os, signal, sys, torch
    import wubugen.train.step as step_mod
    from wubugen.cli import main
    torch.set_num_threads(1)
    real = step_mod.StepRunner.run
    calls = {"n": 0}
    def run(self, *a, **k):
        calls["n"] += 1
        if os.environ["RANK"] == "1" and calls["n"] == 3:  # only rank 1 is signalled, during step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *a, **k)
    step_mod.StepRunner.run = run
    sys.exit(main(sys.argv[1:]))
""")


def test_ddp_ranks_stop_together_at_a_synced_step(tmp_path, cache):
    script = tmp_path / "ddp_signal.py"
    script.write_text(DDP_SIGNAL)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29531", str(script), *tiny_args(run, cache, "--max_steps", "40", "--log_interval", "2",
                                                            "--batch_size", "1")],
                          env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "SIGTERM: stopped at step 4" in out, out[-3000:]  # log_interval 2: the ranks sync at steps 2, 4, ...
    assert last_step(run) == 4 and ckpt.load_checkpoint(run).step == 4


def test_time_based_saving(tmp_path, cache):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "4", "--save_every_minutes", "0.000001",
                          "--keep_last_checkpoints", "0")) == 0
    assert [p.name for p in ckpt.list_checkpoints(run)] == [f"step_{i:08d}" for i in (1, 2, 3, 4)]


# ---------------------------------------------------------------------------------------------------------------------
# Resume rules
# ---------------------------------------------------------------------------------------------------------------------
def test_resume_applies_logged_changes_and_refuses_incompatible_ones(tmp_path, cache, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "4", "--lambda_kl", "0.0001")) == 0
    config_before = (run / "config.toml").read_text()
    capsys.readouterr()
    refusals = {
        ("--batch_size", "3"): "data position",
        ("--grad_accum_steps", "2"): "data position",
        ("--latent_dim", "16"): "architecture",
        ("--image_h", "64"): "clip shape",
        ("--seed", "7"): "noise streams",
        ("--optimizer", "riemannian_sgd"): "optimizer's state",
        ("--checkpoint_dir", str(tmp_path / "elsewhere")): "writes to the run it resumes",
    }
    for (flag, value), why in refusals.items():
        assert main(["train", "--resume", str(run), flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err and why in err, err
    assert last_step(run) == 4 and (run / "config.toml").read_text() == config_before
    assert not (tmp_path / "elsewhere").exists()

    assert main(["train", "--resume", str(run), "--max_steps", "6", "--lambda_kl", "0.01",
                 "--learning_rate_gen", "0.0001", "--log_interval", "1"]) == 0
    out = capsys.readouterr().out
    changed = [line for line in out.splitlines() if line.startswith("resume with changed options: ")]
    assert len(changed) == 1
    for change in ("max_steps 4 -> 6", "lambda_kl 0.0001 -> 0.01", "learning_rate_gen 0.0003 -> 0.0001",
                   "log_interval 5 -> 1"):
        assert change in changed[0], changed
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    after = [r["values"] for r in rows if r["step"] > 4 and "train/lr_gen" in r["values"]]
    assert after and all(v["train/lr_gen"] == 0.0001 and v["train/lambda_kl"] == 0.01 for v in after)
    # the stored config tells the truth: config.toml, the checkpoint's meta and its optimizer state agree
    assert "lambda_kl = 0.01\n" in (run / "config.toml").read_text()
    c = ckpt.load_checkpoint(run)
    assert c.step == 6 and c.meta["config"]["train"]["lambda_kl"] == 0.01
    assert c.meta["config"]["train"]["learning_rate_gen"] == 0.0001
    assert {g["initial_lr"] for g in c.train_state["opt_g"]["param_groups"]} == {0.0001}
    assert c.train_state["lambda_kl"] == 0.01


def test_corrupt_last_checkpoint_names_the_previous_good_one_or_falls_back(tmp_path, cache, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "6", "--save_interval", "2")) == 0
    w = run / "step_00000006" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max_steps", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "step_00000006/weights.safetensors" in err and f"previous good checkpoint is {run}/step_00000004" in err
    assert "--resume_fallback" in err
    assert main(["train", "--resume", str(run), "--max_steps", "8", "--resume_fallback"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from the previous good checkpoint {run}/step_00000004 (step 4)" in out
    assert json.loads((run / "summary.json").read_text())["steps"] == 8 and ckpt.load_checkpoint(run).step == 8


@pytest.mark.parametrize("meta,what", [("[]", "a JSON object expected"), ('{"step": 2}', 'holds no "config"'),
                                       ('{"step": "two", "config": {}}', "not a step number")])
def test_malformed_checkpoint_metadata_is_one_line(tmp_path, cache, capsys, meta, what):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "2")) == 0
    (run / "step_00000002" / "meta.json").write_text(meta)
    capsys.readouterr()
    for argv in (["train", "--resume", str(run)],
                 ["sample", "--checkpoint", str(run), "--out", str(tmp_path / "s.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "meta.json" in err and what in err, err


def test_pointer_outside_the_run_is_refused(tmp_path, cache, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "1")) == 0
    (run / "last.json").write_text('{"checkpoint": "../../etc", "step": 1}')
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    assert "not a checkpoint of this run" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# The run-dir lock
# ---------------------------------------------------------------------------------------------------------------------
HOLDER = "import sys, time; from wubugen.train.lock import RunLock; RunLock(sys.argv[1]).acquire(); " \
         "print('held', flush=True); time.sleep(120)"


def test_run_dir_lock_refuses_a_second_run_and_takes_over_a_dead_ones(tmp_path, cache, capsys):
    import socket

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(tiny_args(run, cache, "--max_steps", "1")) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"in use by another run (pid {holder.pid} on host {socket.gethostname()}" in err
        assert not (run / "metrics.jsonl").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock file is left, its flock is gone
    assert json.loads((run / "run.lock").read_text())["pid"] == holder.pid
    assert main(tiny_args(run, cache, "--max_steps", "1")) == 0
    assert f"took over the lock of {run} from a run that is gone (pid {holder.pid}" in capsys.readouterr().out
    assert not (run / "run.lock").exists()


# ---------------------------------------------------------------------------------------------------------------------
# OS errors: one line, exit 2, the last checkpoint intact
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_write_failure_mid_checkpoint_is_one_line_and_keeps_the_last_checkpoint(tmp_path, cache, capsys, monkeypatch,
                                                                                 code):
    """Simulated: the step-8 checkpoint's weights file fails half-written (a full disk, a file system gone read-only)."""
    real = ckpt._write_file

    def failing(path, write):
        if "step_00000008" in path.parent.name and path.name == ckpt.WEIGHTS_FILE:
            path.write_bytes(b"\0" * 100)
            raise OSError(code, os.strerror(code), str(path))
        real(path, write)

    monkeypatch.setattr(ckpt, "_write_file", failing)
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "12", "--save_interval", "4")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert os.strerror(code) in err and "weights.safetensors" in err
    assert f"the last checkpoint, {run}/step_00000004 (step 4), is intact: continue with wubugen train --resume" in err
    assert last_step(run) == 4 and ckpt.load_checkpoint(run).step == 4 and no_leftovers(run)
    assert not (run / "run.lock").exists()


def test_checkpoint_dir_that_is_a_file_is_one_line(tmp_path, cache, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(tiny_args(f, cache, "--max_steps", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(f) in err and "a file is in the way" in err


def _userns_tmpfs() -> bool:
    if not shutil.which("unshare") or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            'd=$(mktemp -d); mount -t tmpfs -o size=1m tmpfs "$d" && umount "$d"; r=$?; rmdir "$d"; exit $r'],
                           capture_output=True)
    return probe.returncode == 0


FILL_AFTER = textwrap.dedent("""
    import os, sys
    import wubugen.checkpoint as ckpt
    from wubugen.cli import main
    real = ckpt.save_checkpoint
    def save_then_fill(*a, **k):
        path = real(*a, **k)
        if a[1] == 4:  # the disk fills up after the step-4 checkpoint
            with open(os.path.join(os.environ["FILL_DIR"], "filler"), "wb") as f:
                try:
                    while True:
                        f.write(b"\\0" * (1 << 16))
                        f.flush()
                except OSError:
                    pass
        return path
    ckpt.save_checkpoint = save_then_fill
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.skipif(not _userns_tmpfs(), reason="cannot mount a tmpfs here (no user namespaces)")
def test_real_full_and_read_only_tmpfs(tmp_path, cache):
    """A real 48 MB tmpfs (mounted in a user namespace): it fills up after the step-4 checkpoint; then, remounted
    read-only, a resume is refused. Both one line and exit 2; the run is copied out and its last checkpoint loaded."""
    script = tmp_path / "fill.py"
    script.write_text(FILL_AFTER)
    mnt, copy = tmp_path / "mnt", tmp_path / "copy"
    mnt.mkdir()
    copy.mkdir()
    run = mnt / "run"
    py = sys.executable
    train = " ".join(tiny_args(run, cache, "--max_steps", "12", "--save_interval", "4"))
    shell = (f"mount -t tmpfs -o size=48m tmpfs {mnt} && cd {REPO} && "
             f"FILL_DIR={mnt} {py} {script} {train} 2> {tmp_path}/err1; echo $? > {tmp_path}/rc1; "
             f"rm -f {mnt}/filler && mount -o remount,ro {mnt} && "
             f"{py} -m wubugen train --resume {run} --max_steps 16 2> {tmp_path}/err2; echo $? > {tmp_path}/rc2; "
             f"cp -a {run}/. {copy}/")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    err1, err2 = (tmp_path / "err1").read_text().strip(), (tmp_path / "err2").read_text().strip()
    assert (tmp_path / "rc1").read_text().strip() == "2", err1
    assert len(err1.splitlines()) == 1 and "No space left on device" in err1 and "step_00000004 (step 4), is intact" in err1
    assert (tmp_path / "rc2").read_text().strip() == "2", err2
    assert len(err2.splitlines()) == 1 and "Read-only file system" in err2
    assert last_step(copy) == 4 and ckpt.load_checkpoint(copy).step == 4 and no_leftovers(copy)


# ---------------------------------------------------------------------------------------------------------------------
# Devices and sampling
# ---------------------------------------------------------------------------------------------------------------------
def test_a_device_that_does_not_exist_is_one_line(tmp_path, cache, capsys):
    bad = ["cuda:7", "tpu"] if torch.cuda.is_available() else ["cuda", "cuda:1", "tpu"]
    for dev in bad:
        assert main(tiny_args(tmp_path / "run", cache, "--max_steps", "1", "--device", dev)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--device {dev}" in err, err
    assert not (tmp_path / "run").exists()


def test_clip_grid_stream_equals_the_grid():
    from wubugen.media import clip_grid, write_clip_grid_stream
    from PIL import Image
    import tempfile

    clips = torch.randint(0, 256, (7, 3, 1, 5, 4), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "g.png"
        write_clip_grid_stream(out, iter([clips[:3], clips[3:6], clips[6:]]), 7)
        assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), clip_grid(clips))


def test_sample_streams_many_clips_in_batches_and_refuses_what_a_format_cannot_hold(tmp_path, cache, capsys,
                                                                                      monkeypatch):
    from PIL import Image

    from wubugen.eval import commands as eval_cmds
    from wubugen.models.vaegan import WuBuGAADHybridGen

    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "1")) == 0
    for suffix in (".gif", ".mp4"):
        assert main(["sample", "--checkpoint", str(run), "--num", "100000", "--out", str(tmp_path / f"x{suffix}")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--num 100000" in err and "holds at most" in err
        assert not (tmp_path / f"x{suffix}").exists()
    sizes = []
    real = WuBuGAADHybridGen.sample
    monkeypatch.setattr(WuBuGAADHybridGen, "sample", lambda self, n, **k: sizes.append(n) or real(self, n, **k))
    out = tmp_path / "many.png"
    assert main(["sample", "--checkpoint", str(run), "--num", "70", "--out", str(out)]) == 0
    assert sizes == [32, 32, 6] and max(sizes) == eval_cmds.SAMPLE_BATCH
    w, h = Image.open(out).size
    assert (w, h) == (32, 70 * 32 + 2 * 69)  # one 32x32 frame per clip (tiny: 1 predicted frame), 2 px separators


def test_stop_signals_record_repeat_abort_and_restore(monkeypatch):
    from wubugen.errors import SignalAbort
    from wubugen.train import signals as sigmod
    from wubugen.train.distributed import DistInfo

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with sigmod.StopSignals(announce=False) as stop:
        control = sigmod.StopControl(stop, DistInfo(), torch.device("cpu"), max_seconds=0.0, save_every_minutes=0.0,
                                     t_created=0.0)
        assert control.poll(True) == (0, False, False)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM and control.poll(False) == (signal.SIGTERM, False, False)
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM never aborts
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C within the grace period: the same request (torchrun's copy)
        monkeypatch.setattr(sigmod, "REPEAT_GRACE_S", 0.0)
        with pytest.raises(SignalAbort):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: abort
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    out_of_time = sigmod.StopControl(sigmod.StopSignals(), DistInfo(), torch.device("cpu"), max_seconds=0.5,
                                     save_every_minutes=1e-9, t_created=0.0)
    assert out_of_time.poll(True) == (0, True, True)


def test_sigterm_outside_training_stops_the_command_in_one_line(monkeypatch, capsys):
    import time

    from wubugen.eval import commands as eval_cmds

    def slow(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    monkeypatch.setattr(eval_cmds, "_sample_cmd", slow)
    assert main(["sample", "--checkpoint", "x", "--out", "y.png"]) == 143
    assert capsys.readouterr().err.strip() == "wubugen: SIGTERM: stopped"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI put the default back
