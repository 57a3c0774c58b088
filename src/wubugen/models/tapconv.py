"""Convolutions with few output channels as one matmul over channels and a shifted sum over kernel taps.

cuDNN is slow on a full-resolution conv with 3 output channels (the generator's 64 -> 3 output conv took 4.1 ms forward
+ backward of a 43.8 ms compiled fp32 step on an H100): tensor-core tiles want many output channels. The same conv is

    y[p, k, o] = sum_c x[p, c] W[o, c, k]          one (pixels x C_in) @ (C_in x K*C_out) matmul
    out[p, o]  = sum_k y[p + offset_k - pad, k, o]   a shifted sum over the K kernel taps (zero outside)

The matmul (a 1x1x1 convolution) streams x once at full matrix rate; the shifted sum reads K*C_out values per output
pixel (27 * 3 = 81 for a 3x3x3 kernel), a memory-bound kernel inductor fuses with the bias and whatever follows. The
backward is the same two steps transposed (a shifted gather of the output gradient, then two matmuls), never a col2im
scatter.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wubugen.models.layers import set_runtime_switch


def _taps(kernel: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    return list(itertools.product(*(range(k) for k in kernel)))


class _ShiftSum(torch.autograd.Function):
    """y (B, K*O, T, H, W), tap k's O channels at [k*O, (k+1)*O) -> out (B, O, T, H, W),
    out[t, h, w] = sum_k y[t + i_k - pt, h + j_k - ph, w + l_k - pw, k] with zeros outside the map."""

    @staticmethod
    def forward(y: Tensor, kernel: tuple[int, int, int], out_channels: int) -> Tensor:
        pt, ph, pw = (k // 2 for k in kernel)
        _, _, t, h, w = y.shape
        yp = F.pad(y, (pw, pw, ph, ph, pt, pt))
        o = out_channels
        terms = [yp[:, n * o:(n + 1) * o, i:i + t, j:j + h, l:l + w] for n, (i, j, l) in enumerate(_taps(kernel))]
        return torch.stack(terms).sum(0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.kernel = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        # d out[s - i_k + pt] / d y[s, k] = 1: tap k's gradient is the output gradient shifted the other way
        pt, ph, pw = (k // 2 for k in ctx.kernel)
        _, _, t, h, w = grad.shape
        gp = F.pad(grad, (pw, pw, ph, ph, pt, pt))
        parts = [gp[:, :, 2 * pt - i:2 * pt - i + t, 2 * ph - j:2 * ph - j + h, 2 * pw - l:2 * pw - l + w]
                 for i, j, l in _taps(ctx.kernel)]
        return torch.cat(parts, 1), None, None


def tap_conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.conv3d(x, weight, bias, stride=1, padding=k//2) for odd kernels, as a matmul and a shifted sum.

    x (B, C_in, T, H, W), weight (C_out, C_in, kt, kh, kw) -> (B, C_out, T, H, W). The matmul is a 1x1x1 convolution
    to K*C_out channels: cuDNN runs it as one GEMM over channels-last pixels, with the convolution's own precision
    (TF32 in fp32 unless torch.backends.cudnn.allow_tf32 is off); on an H100 it beat a cuBLAS matmul over the same
    view (2.32 against 2.76 ms forward + backward in fp32, docs/benchmarks.md)."""
    c_out, c_in, *kernel = weight.shape
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"tap_conv3d needs odd kernel sizes, got {tuple(kernel)}")
    kernel = tuple(kernel)
    # (K*C_out, C_in, 1, 1, 1), tap-major: output channel k*C_out + o is tap k of output o
    w1 = weight.permute(2, 3, 4, 0, 1).reshape(-1, c_in)[:, :, None, None, None]
    y = F.conv3d(x, w1)  # (B, K*C_out, T, H, W)
    out = _ShiftSum.apply(y, kernel, c_out)
    return out if bias is None else out + bias.view(1, -1, 1, 1, 1)


class TapConv3d(nn.Conv3d):
    """nn.Conv3d (stride 1, 'same' zero padding, odd kernel) that computes with `tap_conv3d` while `use_taps` is on.

    The parameters and state_dict keys are nn.Conv3d's, so checkpoints do not depend on the switch."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int]):
        super().__init__(in_channels, out_channels, kernel_size, 1, tuple(k // 2 for k in kernel_size))
        self.use_taps = False

    def forward(self, x: Tensor) -> Tensor:
        if self.use_taps:
            return tap_conv3d(x, self.weight, self.bias)
        return super().forward(x)


def set_tap_convs(module: nn.Module, on: bool) -> int:
    """Switch every TapConv3d inside `module` to the tap path (or back; the runtime switch `use_taps`). -> how many
    were switched."""
    return set_runtime_switch(module, "use_taps", on)
