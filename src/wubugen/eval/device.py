"""`--device`: checked before anything is built, so a device that does not exist is one line, not a CUDA traceback
deep inside the model's set-up. Training (`wubugen.train.distributed`), sampling and evaluation all go through here."""
from __future__ import annotations

import torch

from wubugen.errors import UserError


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when there is one, else the CPU), cpu, cuda or cuda:N -> a device that exists here."""
    spec = (name or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = spec.partition(":")[2]
        if index and not index.isdigit():
            raise UserError(f"--device {name}: not a device; give auto, cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available here; give --device cpu (or auto)")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            have = ", ".join(f"cuda:{i}" for i in range(count))
            raise UserError(f"--device {name}: this machine has {count} CUDA device(s) ({have})")
        return torch.device(spec)
    raise UserError(f"--device {name}: not a device wubugen can use; give auto, cpu, cuda or cuda:N")
