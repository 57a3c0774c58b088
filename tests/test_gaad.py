"""GAAD boxes against the original script's boxes for the same settings (test vectors), and the rasterised region maps."""
import pytest
import torch

from wubugen.gaad import gaad_boxes, golden_subdivide, normalized_boxes, phi_spiral_boxes, region_masks

GOLDEN_256 = [[0, 0, 256, 256], [0, 0, 158.22, 256], [0, 0, 158.22, 158.22], [158.22, 0, 256, 256], [0, 0, 97.78, 158.22],
              [0, 158.22, 158.22, 256], [158.22, 0, 256, 158.22], [97.78, 0, 158.22, 158.22], [0, 0, 97.78, 97.78],
              [0, 158.22, 97.78, 256], [158.22, 0, 256, 97.78], [158.22, 158.22, 256, 256]]
SPIRAL_256_12 = [[96, 96, 160, 160], [120.86, 108.06, 160.74, 147.94], [119.86, 123.19, 156.61, 159.93],
                 [105.34, 133.21, 138.3, 166.17], [85.82, 124.53, 114.35, 153.06], [82.46, 95.27, 106.03, 118.84],
                 [114.05, 66.35, 132.33, 84.63], [173.25, 74.4, 186.31, 87.45], [212.88, 138.81, 225.68, 151.61],
                 [176.36, 232.06, 189.16, 244.86], [52.86, 249.6, 65.66, 256], [0, 149.49, 6.4, 162.29]]
SPIRAL_256_8 = [[96, 96, 160, 160], [120.86, 108.06, 160.74, 147.94], [113.03, 130.5, 147.69, 165.16],
                [83.78, 121.39, 111.63, 149.24], [101.18, 72.51, 120.98, 92.31], [189.12, 86.98, 201.92, 99.78],
                [187.7, 219.83, 200.5, 232.63], [5.19, 221.8, 17.99, 234.6]]
GOLDEN_64_6 = [[0, 0, 64, 64], [0, 0, 39.55, 64], [0, 0, 39.55, 39.55], [39.55, 0, 64, 64], [0, 0, 24.45, 39.55],
               [0, 39.55, 39.55, 64]]
SPIRAL_64_6 = [[24, 24, 40, 40], [30.22, 27.02, 40.18, 36.98], [25.32, 33.32, 33.35, 41.35], [22.62, 20.43, 27.99, 25.8],
               [50.79, 26.62, 53.99, 29.82], [19.82, 62.4, 23.02, 64]]


def close(boxes, expected):
    return torch.allclose(boxes, torch.tensor(expected, dtype=torch.float32), atol=0.006)


def test_launcher_appearance_boxes_match_spec():
    b = gaad_boxes(256, 256, 24, "hybrid", 2)
    assert b.shape == (24, 4)
    assert close(b[:12], GOLDEN_256)
    assert close(b[12:], SPIRAL_256_12)


def test_launcher_motion_boxes_match_spec_including_float32_tie():
    b = gaad_boxes(256, 256, 16, "hybrid", 2)
    assert close(b[:8], GOLDEN_256[:8])  # the 8th is [97.78,0,158.22,158.22]; float64 sorting would pick another
    assert close(b[8:], SPIRAL_256_8)


def test_default_64px_boxes_match_spec():
    b = gaad_boxes(64, 64, 12, "hybrid", 4)
    assert close(b[:6], GOLDEN_64_6)
    assert close(b[6:], SPIRAL_64_6)


def test_modes_and_padding():
    assert torch.equal(gaad_boxes(64, 64, 5, "subdivide", 4), golden_subdivide(64, 64, 5, 4))
    assert torch.equal(gaad_boxes(64, 64, 5, "spiral", 4), phi_spiral_boxes(64, 64, 5))
    many = golden_subdivide(16, 16, 200, 8)  # few boxes exist: padded with copies of the last
    assert many.shape == (200, 4) and torch.equal(many[-1], many[-2])
    with pytest.raises(ValueError):
        gaad_boxes(64, 64, 4, "bogus", 4)


@pytest.mark.parametrize("w,h", [(96, 48), (40, 72), (33, 17)])
def test_boxes_are_valid_for_any_frame(w, h):
    for mode in ("subdivide", "spiral", "hybrid"):
        b = gaad_boxes(w, h, 10, mode, 2)
        assert (b[:, 0] < b[:, 2]).all() and (b[:, 1] < b[:, 3]).all()
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
        nb = normalized_boxes(b, w, h)
        assert (nb >= 0).all() and (nb <= 1).all()  # positive heights: the original's negative box height cannot happen


def test_region_masks_are_exact_coverage():
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [0.0, 0.0, 32.0, 16.0], [10.0, 10.0, 12.0, 11.0]])
    m = region_masks(boxes, 64, 64, 8, 8)
    assert m.shape == (3, 8, 8)
    assert torch.allclose(m[0], torch.ones(8, 8))
    assert torch.allclose(m[1].sum() * 64, torch.tensor(32.0 * 16.0))  # area preserved (cell = 8x8 px)
    assert torch.allclose(m[2].sum() * 64, torch.tensor(2.0))
    assert m[2, 1, 1] > 0 and m[2, 0, 0] == 0
