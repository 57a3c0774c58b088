"""The launcher step's 3-D convolutions with kernels wider than 1 (256x256, 3 frames, batch 4; D at batch 8: real and
fake), timed alone forward + backward, in several formulations, bf16 on a GPU: where the step's matrix work runs near
the card's rate and where it does not (issue 19: the compiled step is 4.1 TFLOP in 23 ms; the matrix work alone would
take 5.5 ms). Not here: the 1x1x1 maps into and out of the latent, D's 1x3x3 head, and the generator's pass of its
output through the frozen D (batch 4, forward and input gradients): 3.94 of the step's 4.11 TFLOP are timed.

Formulations (the same math; `--check` compares them with float64 on the CPU):
* `nc`: cuDNN's 3-D conv, contiguous (NCDHW) tensors;
* `cl`: cuDNN's 3-D conv, channels-last-3d (NDHWC) tensors and weights;
* `stack`: the 3 temporal taps stacked into channels, one 2-D conv per frame over (B*T, 3*C_in, H, W) channels-last
  (a copy of the input three times the size, one GEMM with K three times as deep);
* `taps`: time-major frames (T*B, C, H, W) channels-last, one 2-D conv per temporal tap on the frames it reads,
  summed into the output (no copy of the input, three GEMMs);
* `cols` (the layers with 3 channels on one side only, compiled by inductor so its gathers and sums are one kernel
  each): 3 input channels, the input's patches gathered into K*3 channels (padded to a multiple of 8) and one 1x1x1
  conv; 3 output channels (stride 1), models/tapconv.py's 1x1x1 conv to K*3 channels and a shifted sum.

usage: python benchmarks/conv_layers.py [--check] [--dtype bf16|fp32] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wubugen.models.tapconv import tap_conv3d  # noqa: E402


@dataclass(frozen=True)
class Layer:
    name: str
    transposed: bool
    b: int
    cin: int
    cout: int
    k: tuple[int, int, int]
    s: tuple[int, int, int]
    p: tuple[int, int, int]
    t: int
    hw: int
    input_grad: bool = True

    def out_hw(self) -> int:
        if self.transposed:
            return (self.hw - 1) * self.s[1] - 2 * self.p[1] + self.k[1]
        return (self.hw + 2 * self.p[1] - self.k[1]) // self.s[1] + 1

    def flops(self) -> float:
        """forward + backward (weight gradient, and input gradient where the layer needs it)"""
        kk = self.k[0] * self.k[1] * self.k[2]
        pix = self.b * self.t * (self.hw ** 2 if self.transposed else self.out_hw() ** 2)
        fwd = 2.0 * pix * self.cin * self.cout * kk
        return fwd * (3 if self.input_grad else 2)


K3, K4, S1, S2, P1 = (3, 3, 3), (3, 4, 4), (1, 1, 1), (1, 2, 2), (1, 1, 1)
LAYERS = [
    Layer("enc1 3->64 @256", False, 4, 3, 64, K3, S1, P1, 3, 256, input_grad=False),
    Layer("enc2 64->128 down @256", False, 4, 64, 128, K4, S2, P1, 3, 256),
    Layer("enc3 128->256 down @128", False, 4, 128, 256, K4, S2, P1, 3, 128),
    Layer("enc4 256->256 @64", False, 4, 256, 256, K3, S1, P1, 3, 64),
    Layer("gen1 256->256 @64 (x2)", False, 4, 256, 256, K3, S1, P1, 3, 64),
    Layer("gen3 256->128 up @64", True, 4, 256, 128, K4, S2, P1, 3, 64),
    Layer("gen4 128->64 up @128", True, 4, 128, 64, K4, S2, P1, 3, 128),
    Layer("gen5 64->3 @256", False, 4, 64, 3, K3, S1, P1, 3, 256),
    Layer("d1 3->64 down @256 (b8)", False, 8, 3, 64, K4, S2, P1, 3, 256, input_grad=False),
    Layer("d2 64->128 down @128 (b8)", False, 8, 64, 128, K4, S2, P1, 3, 128),
    Layer("d3 128->256 down @64 (b8)", False, 8, 128, 256, K4, S2, P1, 3, 64),
]
REPEAT = {"gen1 256->256 @64 (x2)": 2}


def conv3d(layer: Layer, x: Tensor, w: Tensor) -> Tensor:
    """x (B, C, T, H, W), w as nn.Conv3d / nn.ConvTranspose3d keep it."""
    if layer.transposed:
        return F.conv_transpose3d(x, w, None, layer.s, layer.p)
    return F.conv3d(x, w, None, layer.s, layer.p)


def _conv2d(layer: Layer, x: Tensor, w2: Tensor) -> Tensor:
    if layer.transposed:
        return F.conv_transpose2d(x, w2, None, layer.s[1:], layer.p[1:])
    return F.conv2d(x, w2, None, layer.s[1:], layer.p[1:])


def _tap_weights(layer: Layer, w: Tensor) -> list[Tensor]:
    """The 2-D weight of each temporal tap, ordered by the input frame offset -1, 0, +1 it multiplies (a transposed
    conv's temporal part, stride 1, is a plain conv with the taps flipped)."""
    taps = [w[:, :, i] for i in range(w.shape[2])]
    return taps[::-1] if layer.transposed else taps


def stacked(layer: Layer, x: Tensor, w: Tensor) -> Tensor:
    """x (B*T, C, H, W) frame-major -> (B*T, C_out, H', W'): frames t-1, t, t+1 stacked into channels (zeros outside)."""
    bt, c, h, ww = x.shape
    b, t = layer.b, layer.t
    xp = F.pad(x.reshape(b, t, c, h, ww), (0, 0, 0, 0, 0, 0, 1, 1))
    st = torch.cat([xp[:, i:i + t] for i in range(3)], 2).reshape(bt, 3 * c, h, ww)
    st = st.contiguous(memory_format=torch.channels_last)
    taps = _tap_weights(layer, w)
    w2 = torch.cat(taps, 0 if layer.transposed else 1)
    return _conv2d(layer, st, w2.contiguous(memory_format=torch.channels_last))


def tapsum(layer: Layer, x: Tensor, w: Tensor) -> Tensor:
    """x (T*B, C, H, W) time-major -> (T*B, C_out, H', W'): out[t] = sum over offsets d of conv2d(x[t + d], W_d)."""
    b = layer.b
    wm, w0, wp = (q.contiguous(memory_format=torch.channels_last) for q in _tap_weights(layer, w))
    out = _conv2d(layer, x, w0)
    prev = _conv2d(layer, x[:-b], wm)  # frames 0..T-2 feed outputs 1..T-1
    nxt = _conv2d(layer, x[b:], wp)  # frames 1..T-1 feed outputs 0..T-2
    return out + torch.cat([torch.zeros_like(prev[:b]), prev]) + torch.cat([nxt, torch.zeros_like(nxt[:b])])


def patches(layer: Layer, x: Tensor, w: Tensor) -> Tensor:
    """im2col: x (B, C, T, H, W) -> its (kt, kh, kw) patches as K*C channels (tap-major, zero channels up to a multiple
    of 8: tensor-core tiles), then one 1x1x1 conv with the weight laid out alike."""
    from itertools import product

    (pt, ph, pw), (st, sh, sw), k = layer.p, layer.s, layer.k
    t, h, ww = x.shape[2:]
    to, ho, wo = ((n + 2 * p - kk) // s + 1 for n, p, kk, s in zip((t, h, ww), layer.p, k, layer.s))
    xp = F.pad(x, (pw, pw, ph, ph, pt, pt))
    cols = [xp[:, :, i:i + (to - 1) * st + 1:st, j:j + (ho - 1) * sh + 1:sh, l:l + (wo - 1) * sw + 1:sw]
            for i, j, l in product(*(range(kk) for kk in k))]
    kc = len(cols) * x.shape[1]
    extra = -kc % 8
    if extra:
        cols.append(torch.zeros_like(cols[0][:, :1]).expand(-1, extra, -1, -1, -1))
    c = torch.cat(cols, 1).contiguous(memory_format=torch.channels_last_3d)
    w1 = F.pad(w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], kc), (0, extra))[:, :, None, None, None]
    return F.conv3d(c, w1.contiguous(memory_format=torch.channels_last_3d))


def cols_form(layer: Layer):
    """The `cols` formulation of a layer with 3 channels on one side, or None where it has none."""
    if layer.cin == 3 and not layer.transposed:
        return patches
    if layer.cout == 3 and not layer.transposed and layer.s == (1, 1, 1):
        # tap_conv3d pads each dim by k // 2 ('same')
        assert layer.p == tuple(k // 2 for k in layer.k), (layer.name, layer.p)
        return lambda _layer, x, w: tap_conv3d(x, w)
    return None


_COMPILED: dict[str, object] = {}


def to_frames(x: Tensor, time_major: bool) -> Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W) frame-major or (T*B, ...) time-major, channels-last."""
    y = x.permute(2, 0, 1, 3, 4) if time_major else x.permute(0, 2, 1, 3, 4)
    return y.reshape(-1, *x.shape[1:2], *x.shape[3:]).contiguous(memory_format=torch.channels_last)


def from_frames(y: Tensor, layer: Layer, time_major: bool) -> Tensor:
    b, t = layer.b, layer.t
    if time_major:
        return y.reshape(t, b, *y.shape[1:]).permute(1, 2, 0, 3, 4)
    return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


def make(layer: Layer, device, dtype, fmt: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(layer.b, layer.cin, layer.t, layer.hw, layer.hw, generator=g, dtype=torch.float64)
    wshape = (layer.cin, layer.cout, *layer.k) if layer.transposed else (layer.cout, layer.cin, *layer.k)
    w = torch.randn(wshape, generator=g, dtype=torch.float64) / (layer.cin * 27) ** 0.5
    x, w = x.to(device, dtype), w.to(device, dtype)
    if fmt in ("cl", "cols"):
        x, w = x.contiguous(memory_format=torch.channels_last_3d), w.contiguous(memory_format=torch.channels_last_3d)
    elif fmt in ("stack", "taps"):
        x = to_frames(x, fmt == "taps")
    return x.requires_grad_(layer.input_grad), w.requires_grad_()


def run(layer: Layer, fmt: str, x: Tensor, w: Tensor) -> Tensor:
    if fmt == "cols":
        form = cols_form(layer)
        if form is None:
            raise NotImplementedError("no cols form")
        if x.is_cuda:
            if layer.name not in _COMPILED:
                _COMPILED[layer.name] = torch.compile(lambda x, w, _f=form, _l=layer: _f(_l, x, w), dynamic=False)
            return _COMPILED[layer.name](x, w)
        return form(layer, x, w)
    if fmt in ("nc", "cl"):
        return conv3d(layer, x, w)
    return stacked(layer, x, w) if fmt == "stack" else tapsum(layer, x, w)


FORMATS = ("nc", "cl", "stack", "taps", "cols")


def check() -> None:
    """Every formulation against the 3-D conv in float64 on the CPU, on small sizes of each layer's kind."""
    worst = 0.0
    for L in LAYERS:
        small = Layer(L.name, L.transposed, 2, min(L.cin, 5), min(L.cout, 4), L.k, L.s, L.p, 3, 8, L.input_grad)
        x, w = make(small, "cpu", torch.float64, "nc", seed=1)
        ref = conv3d(small, x, w)
        for fmt in ("stack", "taps"):
            xf = to_frames(x.detach(), fmt == "taps")
            got = from_frames(run(small, fmt, xf, w.detach()), small, fmt == "taps")
            err = ((got - ref).norm() / ref.norm()).item()
            worst = max(worst, err)
            assert err < 1e-12, (L.name, fmt, err)
        if cols_form(small) is not None:
            err = ((run(small, "cols", x.detach(), w.detach()) - ref).norm() / ref.norm()).item()
            worst = max(worst, err)
            assert err < 1e-12, (L.name, "cols", err)
    print(f"check: every formulation equals the 3-D conv (worst relative error {worst:.1e})")


def time_layer(layer: Layer, fmt: str, dtype, iters: int = 20) -> float:
    x, w = make(layer, "cuda", dtype, fmt)
    gy = None

    def once():
        nonlocal gy
        y = run(layer, fmt, x, w)
        if gy is None:
            gy = torch.randn_like(y)
        y.backward(gy)

    return median_ms(once, iters)


def median_ms(once, iters: int = 20, warmup: int = 5) -> float:
    """Median CUDA-event time of `once()` in ms, after `warmup` untimed calls (also norm_kernels.py's timer)."""
    for _ in range(warmup):
        once()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        once()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare the formulations in float64 on the CPU and stop")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.check:
        check()
        return
    if not torch.cuda.is_available():
        raise SystemExit("conv_layers.py times on a CUDA device (--check runs on the CPU)")
    torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    fmts = args.formats.split(",")
    print(f"card: {torch.cuda.get_device_name()}; torch {torch.__version__}; cuDNN {torch.backends.cudnn.version()}; "
          f"{args.dtype}; forward + backward, median of 20, ms (TFLOP/s)")
    print(f"{'layer':<28}" + "".join(f"{f:>18}" for f in fmts))
    rows, total = [], dict.fromkeys(fmts, 0.0)
    for L in LAYERS:
        n = REPEAT.get(L.name, 1)
        cells, row = [], {"layer": L.name, "tflop": L.flops() / 1e12, "count": n}
        for f in fmts:
            try:
                ms = time_layer(L, f, dtype)
            except Exception as err:  # noqa: BLE001 - one formulation cuDNN refuses must not lose the rest
                cells.append(f"{type(err).__name__:>18}")
                row[f] = None
                continue
            total[f] += n * ms
            row[f] = ms
            cells.append(f"{ms:9.3f} ({L.flops() / ms / 1e9:5.0f})")
        rows.append(row)
        print(f"{L.name:<28}" + "".join(cells), flush=True)
    flops = sum(REPEAT.get(L.name, 1) * L.flops() for L in LAYERS)
    print(f"{'all (' + format(flops / 1e12, '.2f') + ' TFLOP)':<28}" +
          "".join(f"{total[f]:9.3f} ({flops / total[f] / 1e9 if total[f] else 0:5.0f})" for f in fmts))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"card": torch.cuda.get_device_name(), "dtype": args.dtype, "rows": rows, "total_ms": total}, fh,
                      indent=2)


if __name__ == "__main__":
    sys.exit(main())
