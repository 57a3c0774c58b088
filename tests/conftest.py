"""What several test modules share: where the real footage is, the tiny-preset `wubugen train` command line, a cache
folder per module and a RAFT-small weights file.

Test modules import the constants and helpers with `from conftest import ...` (pytest puts this folder on sys.path).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # real footage and MNIST digits beside the repository (may be absent)
VIDEOS = SHARED_DATA / "videos"  # train/ and val/
DIGITS = SHARED_DATA / "mnist" / "mnist5k_images_uint8.npy"
DOG_VIDEO = VIDEOS / "val" / "sam2__01_dog.mp4"  # a short real validation clip


def tiny_args(run: str | Path, cache: str | Path, *extra: str) -> list[str]:
    """`wubugen train` arguments for the tiny preset writing to `run`, with the frame cache in `cache`."""
    return ["train", "--preset", "tiny", "--checkpoint_dir", str(run), "--cache_dir", str(cache), "--no-progress",
            *extra]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A cache folder shared by the tests of one module, so footage is decoded once per module."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def raft_small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RAFT-small weights with random values in a local file (the tests need the architecture, not trained values)."""
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "my_raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    return path
