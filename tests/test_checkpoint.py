"""Checkpoints: bitwise round trips, atomicity under crashes (raised and SIGKILL), retention, safe loading, strictness."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from wubugen.errors import UserError
from wubugen import checkpoint as ck


# ---- helpers ---------------------------------------------------------------------------------------------------------
class Net(nn.Module):
    """Linear + BatchNorm (buffers), old-style spectral norm (weight_orig/u/v), a parametrized spectral norm, and a
    tied weight (two keys, one tensor), i.e. the kinds of state-dict keys the real model and discriminator have."""

    def __init__(self, out: int = 2):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.sn_old = torch.nn.utils.spectral_norm(nn.Linear(8, 8))
        self.sn_new = parametrizations.spectral_norm(nn.Linear(8, 8))
        self.head = nn.Linear(8, out)
        self.tied = nn.Linear(4, 8)
        self.tied.weight = self.fc.weight

    def forward(self, x):
        return self.head(self.sn_new(self.sn_old(self.bn(self.fc(x))))) + self.tied(x).sum()


def trained_net_and_opt(seed: int = 0):
    torch.manual_seed(seed)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    return net, opt


def assert_state_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def save_simple(root, step, value=0.0, keep_last=3, best=False):
    return ck.save_checkpoint(root, step, {"model": {"w": torch.full((3,), float(value))}}, {"step": step}, {}, keep_last, best)


# ---- round trip ------------------------------------------------------------------------------------------------------
def test_round_trip_is_bitwise(tmp_path):
    net, opt = trained_net_and_opt()
    ema = {"w": torch.randn(3, 3, dtype=torch.bfloat16), "t": torch.arange(6).reshape(2, 3).t()}  # bf16; non-contiguous
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    rng = ck.capture_rng_state()
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    q_state = {"q_table": {(0, 1): [0.5, -1.0]}, "epsilon": 0.3, "prev_action": None, "history": [1.0, float("inf")]}
    train_state = {
        "optimizer_gen": opt.state_dict(), "scaler_gen": torch.amp.GradScaler("cpu").state_dict(), "q_gen": q_state,
        "rng": rng, "step": 7, "epoch": 1, "data_position": 42, "lambda_kl": 1e-4, "best_metric": 23.5,
    }
    meta = {"config": {"train": {"lambda_kl": 1e-4}}, "metrics": {"avg_val_psnr": 23.5, "avg_val_lpips": None, "x": float("inf")}}
    d = ck.save_checkpoint(tmp_path, 7, {"model": net, "ema": ema}, train_state, meta, keep_last=3, best=True)
    assert d == tmp_path / "step_00000007"
    assert sorted(p.name for p in d.iterdir()) == ["meta.json", "train_state.pt", "weights.safetensors"]

    c = ck.load_checkpoint(tmp_path)
    assert c.path == d and c.step == 7
    assert_state_equal(c.weights["model"], net.state_dict())
    assert_state_equal(c.weights["ema"], ema)
    assert c.meta["metrics"] == {"avg_val_psnr": 23.5, "avg_val_lpips": None, "x": "inf"}
    assert c.meta["config"] == meta["config"] and "wubugen_version" in c.meta

    # optimizer state restores bitwise into a fresh optimizer
    net2 = Net()
    assert ck.load_module_weights(net2, c.weights["model"], strict=True).clean
    opt2 = torch.optim.Adam(net2.parameters(), lr=5.0)
    opt2.load_state_dict(c.train_state["optimizer_gen"])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        assert_state_equal(s1["state"][i], s2["state"][i])
    net.eval(), net2.eval()
    x = torch.randn(3, 4)
    assert torch.equal(net(x), net2(x))  # spectral-norm u/v and the tied weight came back too

    # RNG states: the same numbers after restoring
    random.random(), np.random.rand(5), torch.rand(5)
    ck.restore_rng_state(c.train_state["rng"])
    assert random.random() == expected[0]
    assert np.random.rand(3).tolist() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])

    assert c.train_state["q_gen"] == q_state
    assert {k: c.train_state[k] for k in ("step", "epoch", "data_position", "lambda_kl", "best_metric")} == {
        "step": 7, "epoch": 1, "data_position": 42, "lambda_kl": 1e-4, "best_metric": 23.5}


def test_train_state_must_be_plain(tmp_path):
    with pytest.raises(TypeError, match=r"train_state\['q'\]\['table'\] is a numpy.ndarray"):
        ck.save_checkpoint(tmp_path, 1, {"m": {}}, {"q": {"table": np.zeros(3)}}, {}, 3)
    assert ck.list_checkpoints(tmp_path) == [] and not (tmp_path / "last.json").exists()


def test_module_names_cannot_contain_dots(tmp_path):
    with pytest.raises(ValueError, match="no '.'"):
        ck.save_checkpoint(tmp_path, 1, {"a.b": {}}, {}, {}, 3)


# ---- atomicity -------------------------------------------------------------------------------------------------------
def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    save_simple(tmp_path, 1, value=1.0)
    real_save = torch.save

    def broken_save(obj, f, *a, **kw):  # f: the open file save_checkpoint writes through
        f.write(b"PK\x03\x04 half a zip")  # a truncated file, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_simple(tmp_path, 2, value=2.0)
    monkeypatch.setattr(ck.torch, "save", real_save)

    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000001"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp dir cleaned up
    assert json.loads((tmp_path / "last.json").read_text())["checkpoint"] == "step_00000001"
    assert torch.equal(ck.load_checkpoint(tmp_path).weights["model"]["w"], torch.full((3,), 1.0))


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from wubugen import checkpoint as ck

    root, point = sys.argv[1], sys.argv[2]
    big = {"model": {"w": torch.randn(512, 1024)}}  # 2 MB
    ck.save_checkpoint(root, 1, big, {"step": 1}, {}, keep_last=3)

    def die(*a, **kw):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup handler, no finally: a real crash

    if point == "mid_write":  # train_state.pt half written
        def half(obj, f):  # f: the open file save_checkpoint writes through
            f.write(b"PK\\x03\\x04")
            f.flush()
            die()
        ck.torch.save = half
    elif point == "before_rename":  # every file written and fsynced, directory not yet renamed
        real = os.rename
        os.rename = lambda src, dst: die() if ".tmp-" in str(src) else real(src, dst)
    elif point == "before_pointer":  # step_2 complete, last.json not yet updated
        ck._write_json_atomic = die
    ck.save_checkpoint(root, 2, big, {"step": 2}, {}, keep_last=3)
    """
)


def test_sigkill_mid_save_keeps_previous_checkpoint(tmp_path):
    points = ["mid_write", "before_rename", "before_pointer"]
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    procs = {p: subprocess.Popen([sys.executable, str(script), str(tmp_path / p), p]) for p in points}  # in parallel
    for p, proc in procs.items():
        assert proc.wait(timeout=60) == -signal.SIGKILL, p

    for p in points:
        root = tmp_path / p
        steps = [d.name for d in ck.list_checkpoints(root)]
        # no partial step_* directory: each one that exists is complete and loadable
        for d in ck.list_checkpoints(root):
            ck.load_checkpoint(d)
        assert json.loads((root / "last.json").read_text())["checkpoint"] == "step_00000001", p
        assert ck.load_checkpoint(root).step == 1
        if p == "before_pointer":
            assert steps == ["step_00000001", "step_00000002"]  # complete, just not yet pointed to
        else:
            assert steps == ["step_00000001"], p
            assert any(q.name.startswith(".tmp-") for q in root.iterdir())  # the dead process's temp dir
        # the next save (another process) cleans up what the dead process left
        save_simple(root, 3)
        assert not [q for q in root.iterdir() if q.name.startswith(".")], p
        assert ck.load_checkpoint(root).step == 3


# ---- retention, pointers, same step ----------------------------------------------------------------------------------
def test_retention_keeps_last_k_and_best(tmp_path):
    for step in range(1, 6):
        save_simple(tmp_path, step, keep_last=2, best=(step == 2))
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004", "step_00000005"]
    assert ck.resolve_checkpoint(tmp_path, prefer="best").name == "step_00000002"
    assert ck.resolve_checkpoint(tmp_path).name == "step_00000005"
    save_simple(tmp_path, 6, keep_last=2, best=True)  # best moves: the old best is no longer protected
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000005", "step_00000006"]

    keep_all = tmp_path / "all"
    for step in range(1, 5):
        save_simple(keep_all, step, keep_last=0)
    assert len(ck.list_checkpoints(keep_all)) == 4


def test_same_step_saved_again_replaces_it(tmp_path):
    save_simple(tmp_path, 5, value=1.0)
    save_simple(tmp_path, 5, value=2.0)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000005"]
    assert torch.equal(ck.load_checkpoint(tmp_path).weights["model"]["w"], torch.full((3,), 2.0))
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]


def test_resolve_checkpoint_forms_and_errors(tmp_path):
    d = save_simple(tmp_path / "run", 3)
    assert ck.resolve_checkpoint(d) == d
    assert ck.resolve_checkpoint(tmp_path / "run") == d
    assert ck.resolve_checkpoint(tmp_path / "run" / "last.json") == d
    with pytest.raises(UserError, match="does not exist"):
        ck.resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(UserError, match="not a wubugen checkpoint"):
        ck.resolve_checkpoint(tmp_path)  # a directory with neither weights nor pointers
    (tmp_path / "old.pt").write_bytes(b"x")
    with pytest.raises(UserError, match="old single-file"):
        ck.resolve_checkpoint(tmp_path / "old.pt")
    with pytest.raises(UserError, match="no best.json"):
        ck.resolve_checkpoint(tmp_path / "run", prefer="best")
    (d / "meta.json").unlink()
    with pytest.raises(UserError, match="incomplete: meta.json missing"):
        ck.load_checkpoint(d)


# ---- safe loading ----------------------------------------------------------------------------------------------------
class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_nothing_runs(tmp_path):
    d = save_simple(tmp_path / "run", 1)
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "payload": Exploit(marker)}, d / "train_state.pt")

    with pytest.raises(UserError, match=r"refusing to unpickle .*train_state.pt.*system"):
        ck.load_checkpoint(tmp_path / "run")
    assert not marker.exists()

    # the file is a real exploit: an unsafe load would have run the command
    probe = tmp_path / "probe.pt"
    torch.save({"payload": Exploit(tmp_path / "ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "ran").exists()


def test_corrupt_weights_file_is_a_user_error(tmp_path):
    d = save_simple(tmp_path, 1)
    (d / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read .*weights.safetensors"):
        ck.load_checkpoint(d)


# ---- strict / non-strict ---------------------------------------------------------------------------------------------
def test_strict_and_non_strict_loading_name_the_tensors(tmp_path):
    torch.manual_seed(0)
    old = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    old.register_buffer("retired", torch.zeros(1))
    ck.save_checkpoint(tmp_path, 1, {"model": old}, {}, {}, 3)
    state = ck.load_checkpoint(tmp_path).weights["model"]

    new = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(3, 3))  # head widened, a layer added
    before = {k: v.clone() for k, v in new.state_dict().items()}
    with pytest.raises(UserError) as e:
        ck.load_module_weights(new, state, strict=True, name="model")
    msg = str(e.value)
    for name in ("2.weight", "2.bias", "retired", "1.weight (module (3, 8), checkpoint (2, 8))", "1.bias"):
        assert name in msg
    assert "\n" not in msg
    assert_state_equal(new.state_dict(), before)  # strict failure loads nothing

    report = ck.load_module_weights(new, state, strict=False)
    assert report.missing == ["2.weight", "2.bias"]
    assert report.unexpected == ["retired"]
    assert report.shape_mismatch == ["1.weight", "1.bias"]
    assert report.loaded == 2 and not report.clean
    assert torch.equal(new[0].weight, old[0].weight)  # matching tensors loaded
    assert torch.equal(new[1].weight, before["1.weight"])  # mismatched ones left alone


def test_config_stored_before_predict_residual_loads_as_it_was_built(tmp_path):
    from wubugen.config import build_config

    cfg = build_config("tiny", overrides={"task": "predict", "backbone": "wubu_gaad"})
    stored = cfg.to_dict()
    del stored["model"]["predict_residual"]  # written before the option existed: the frames themselves
    ck.save_checkpoint(tmp_path, 1, {"model": {"w": torch.zeros(1)}}, {}, {"config": stored}, 3)
    assert ck.stored_config(ck.load_checkpoint(tmp_path)).model.predict_residual is False
    ck.save_checkpoint(tmp_path, 2, {"model": {"w": torch.zeros(1)}}, {}, {"config": cfg.to_dict()}, 3)
    assert ck.stored_config(ck.load_checkpoint(tmp_path)).model.predict_residual is True


def test_config_stored_before_predict_skip_frames_loads_without_the_skip(tmp_path):
    from wubugen.config import build_config

    cfg = build_config("tiny", overrides={"task": "predict", "backbone": "wubu_gaad"})
    stored = cfg.to_dict()
    del stored["model"]["predict_skip_frames"]  # written before the skip existed: a generator without it
    ck.save_checkpoint(tmp_path, 1, {"model": {"w": torch.zeros(1)}}, {}, {"config": stored}, 3)
    assert ck.stored_config(ck.load_checkpoint(tmp_path)).model.predict_skip_frames == 0
    assert cfg.model.predict_skip_frames == 2
