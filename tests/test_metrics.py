"""Validation metrics against hand-computed values and torchmetrics' own per-frame SSIM; LPIPS without downloads."""
import inspect
import math
import socket
from pathlib import Path

import pytest
import torch
import torchvision
from torchmetrics.functional.image.lpips import _LPIPS
from torchmetrics.image import StructuralSimilarityIndexMeasure

from wubugen.errors import UserError
from wubugen.eval import metrics as vm


def clip(values, c=1, h=16, w=16):
    """(1, T, c, h, w) clip with frame t constant at values[t] (in [-1, 1])."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1, 1).expand(1, len(values), c, h, w).clone()


def test_psnr_of_known_mse_is_averaged_per_frame():
    m = vm.VideoMetrics("cpu")
    # in [0, 1]: frame 0 differs by 0.1 (mse 1e-2, 20 dB), frame 1 by 0.01 (mse 1e-4, 40 dB)
    m.update(clip([0.2, 0.02]), clip([0.0, 0.0]))
    out = m.compute()
    assert out["avg_val_recon_mse"] == pytest.approx((1e-2 + 1e-4) / 2, rel=1e-5)
    assert out["avg_val_psnr"] == pytest.approx(30.0, abs=1e-3)  # per frame; the batch-mean MSE would give 22.97 (D20)
    assert out["avg_val_lpips"] is None


def test_identical_frames_give_ssim_1_psnr_100():
    x = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    m = vm.VideoMetrics("cpu")
    m.update(x, x.clone())
    out = m.compute()
    assert out["avg_val_psnr"] == pytest.approx(100.0)
    assert out["avg_val_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert out["avg_val_recon_mse"] == 0.0
    assert all(math.isfinite(v) for v in (out["avg_val_psnr"], out["avg_val_ssim"]))


def test_inputs_are_clamped_to_minus_one_one():
    m = vm.VideoMetrics("cpu")
    m.update(clip([3.0]), clip([1.0]))  # 3 clamps to 1: identical
    assert m.compute()["avg_val_psnr"] == pytest.approx(100.0)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_equals_torchmetrics_per_frame(channels):
    torch.manual_seed(0)
    target = torch.rand(2, 3, channels, 24, 20) * 2 - 1
    pred = (target + 0.3 * torch.randn_like(target)).clamp(-1, 1)
    m = vm.VideoMetrics("cpu")
    m.update(pred, target)
    ref = StructuralSimilarityIndexMeasure(data_range=1.0, gaussian_kernel=True, sigma=1.5, kernel_size=11)
    frames = [ref((pred[b, t:t + 1] + 1) / 2, (target[b, t:t + 1] + 1) / 2).item() for b in range(2) for t in range(3)]
    assert m.compute()["avg_val_ssim"] == pytest.approx(sum(frames) / len(frames), abs=1e-6)


def test_two_batches_equal_one_and_sums_reduce():
    torch.manual_seed(1)
    pred, target = torch.rand(4, 2, 3, 16, 16) * 2 - 1, torch.rand(4, 2, 3, 16, 16) * 2 - 1
    whole = vm.VideoMetrics("cpu")
    whole.update(pred, target)
    parts = vm.VideoMetrics("cpu")
    parts.update(pred[:1], target[:1])
    parts.update(pred[1:], target[1:])
    assert torch.allclose(whole.sums(), parts.sums(), rtol=1e-6)
    assert whole.sums()[4].item() == 8  # frames
    a, b = whole.compute(), parts.compute()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6) if a[k] is not None else b[k] is None

    # two "ranks" each see half; the summed sums (what all_reduce gives) yield the whole-set averages
    r0, r1 = vm.VideoMetrics("cpu"), vm.VideoMetrics("cpu")
    r0.update(pred[:2], target[:2])
    r1.update(pred[2:], target[2:])
    reduced = r0.sums() + r1.sums()
    assert r0.compute(reduced)["avg_val_psnr"] == pytest.approx(a["avg_val_psnr"], rel=1e-9)

    whole.reset()
    assert whole.compute() == {k: None for k in a}  # no frames: unavailable, never inf


def test_update_never_reads_values_to_the_host(monkeypatch):
    """Every way a tensor value reaches Python raises inside update (a CPU stand-in for CUDA's sync debug mode)."""
    pred, target = torch.rand(2, 2, 3, 16, 16) * 2 - 1, torch.rand(2, 2, 3, 16, 16) * 2 - 1
    m = vm.VideoMetrics("cpu")

    def sync(*a, **kw):
        raise AssertionError("host sync inside update")

    with monkeypatch.context() as mp:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"):
            mp.setattr(torch.Tensor, name, sync)
        m.update(pred, target)
    assert m.compute()["avg_val_psnr"] > 0


def test_is_better_respects_direction():
    assert vm.is_better("avg_val_psnr", 30.0, 29.0) and not vm.is_better("avg_val_psnr", 28.0, 29.0)
    assert vm.is_better("avg_val_ssim", 0.9, 0.8)
    assert vm.is_better("avg_val_recon_mse", 0.01, 0.02) and not vm.is_better("avg_val_recon_mse", 0.03, 0.02)
    assert vm.is_better("avg_val_lpips", 0.1, 0.2)
    assert vm.is_better("avg_val_lpips", 0.3, None)  # first value
    assert not vm.is_better("avg_val_lpips", None, 0.2)  # unavailable never wins
    assert not vm.is_better("avg_val_psnr", float("nan"), 20.0)
    with pytest.raises(ValueError):
        vm.is_better("fid", 1.0, 2.0)


# ---- LPIPS ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """A randomly initialised torchvision AlexNet (features only: the classifier is 220 MB and LPIPS ignores it)."""
    torch.manual_seed(0)
    state = {k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items() if k.startswith("features.")}
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    torch.save(state, path)
    return path, state


def test_lpips_absent_weights_give_none_without_network(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert vm.load_lpips(None, "cpu") is None
    msg = vm.lpips_unavailable_message(None)
    assert str(tmp_path / "hub" / "checkpoints" / vm.ALEXNET_FILE) in msg and "--lpips_weights PATH" in msg
    with pytest.raises(UserError, match="--lpips_weights .* does not exist"):
        vm.load_lpips(tmp_path / "missing.pth", "cpu")


def test_lpips_from_file_and_from_hub_cache(tmp_path, monkeypatch, no_network, alexnet_file):
    path, state = alexnet_file
    lp = vm.load_lpips(path, "cpu")
    # the backbone weights went into torchmetrics' slices at torchvision's layer indices
    slices = dict(lp.net.net.named_parameters())
    assert len(slices) == 10
    # the calibration layers are torchmetrics' shipped ones (a key mismatch would leave them random silently)
    shipped = torch.load(Path(inspect.getfile(_LPIPS)).parent / "lpips_models" / "alex.pth", map_location="cpu", weights_only=True)
    assert len(shipped) == 5
    for k, v in shipped.items():
        assert torch.equal(lp.net.state_dict()[k], v), k
    for name, p in slices.items():
        _, idx, kind = name.split(".")
        assert torch.equal(p, state[f"features.{idx}.{kind}"])

    torch.manual_seed(2)
    pred, target = torch.rand(1, 2, 3, 32, 32) * 2 - 1, torch.rand(1, 2, 3, 32, 32) * 2 - 1
    m = vm.VideoMetrics("cpu", lp)
    m.update(pred, target)
    m.update(target, target)
    sums = m.sums()
    per_frame = lp(pred[0], target[0])
    assert per_frame.shape == (2,) and (per_frame > 0).all()
    assert sums[3].item() == pytest.approx(per_frame.sum().item(), rel=1e-5)  # identical frames add 0
    assert m.compute()["avg_val_lpips"] == pytest.approx(per_frame.sum().item() / 4, rel=1e-5)

    grey = vm.VideoMetrics("cpu", lp)
    grey.update(pred[:, :, :1], target[:, :, :1])
    assert grey.compute()["avg_val_lpips"] > 0

    # the same file in $TORCH_HOME/hub/checkpoints is found without --lpips_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / vm.ALEXNET_FILE).write_bytes(path.read_bytes())
    assert isinstance(vm.load_lpips(None, "cpu"), vm.LPIPSMetric)

    with pytest.raises(UserError, match="at least 31x31"):
        lp(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


def test_lpips_rejects_a_file_that_is_not_alexnet(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="not a torchvision AlexNet"):
        vm.load_lpips(bad, "cpu")


def test_pairwise_psnr_and_sample_diversity_against_direct_mse():
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (5, 3, 3, 8, 8), generator=g, dtype=torch.uint8)
    clips[3] = clips[1]  # an exact copy
    clips[4] = (clips[2].int() + 2).clamp(0, 255).to(torch.uint8)  # a near copy: about 42 dB
    p = vm.pairwise_psnr(clips)
    x = clips.double() / 255
    for i in range(5):
        assert math.isinf(p[i, i])
        for j in range(5):
            if i != j:
                mse = max(((x[i] - x[j]) ** 2).mean().item(), vm.MSE_FLOOR)
                assert abs(p[i, j].item() - (-10 * math.log10(mse))) < 1e-6
    d = vm.sample_diversity(clips)
    assert d == {"max_pairwise_psnr": 100.0, "near_duplicate_pairs": 2}  # the copy (100 dB cap) and the near copy
    d = vm.sample_diversity(clips[:3])
    assert d["near_duplicate_pairs"] == 0 and d["max_pairwise_psnr"] < 25
    torch.testing.assert_close(vm.pairwise_psnr(clips.float() / 255), p)  # [0, 1] floats read the same
