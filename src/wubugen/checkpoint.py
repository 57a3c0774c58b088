"""Safe, atomic checkpoints.

Layout of a run's checkpoint directory::

    <checkpoint_dir>/
        step_00001000/
            weights.safetensors   every module's tensors, keys prefixed by the module's name ("model.", "disc.", "ema.")
            train_state.pt        everything else (optimizer and scaler states, Q-controller dicts, RNG states, counters),
                                  only tensors and plain Python data, so `torch.load(weights_only=True)` reads it
            meta.json             config, metrics, wubugen version, time
        last.json                 {"checkpoint": "step_00001000", "step": 1000}: the newest checkpoint
        best.json                 the same for the best checkpoint (by --val_primary_metric)

Why this shape: the original pickled one dict (numpy values inside), which torch >= 2.6 refuses to load by default, and a
crash during `torch.save` left a truncated file under the final name. Here a checkpoint is written into a
hidden temporary sibling directory, every file is fsynced, and the directory is renamed into place; a `step_*` directory
therefore either is complete or does not exist. Pointer files are replaced atomically after the rename, so `last.json` names
the previous checkpoint until the new one is whole. Loading never unpickles arbitrary objects.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import shutil
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Literal, Mapping

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from wubugen import __version__
from wubugen.errors import UserError
from wubugen.media import atomic_write_text, fsync_dir as _fsync_dir

WEIGHTS_FILE = "weights.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
META_FILE = "meta.json"
LAST_POINTER = "last.json"
BEST_POINTER = "best.json"
CHECKPOINT_FILES = (WEIGHTS_FILE, TRAIN_STATE_FILE, META_FILE)

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp-"  # hidden, never matches `step_*`
_TRASH_PREFIX = ".trash-"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# --------------------------------------------------------------------------------------------------------------------
# Small filesystem helpers
# --------------------------------------------------------------------------------------------------------------------
def _write_json_atomic(path: Path, obj: Any) -> None:
    """A pointer file, strict JSON, replaced atomically and durably (wubugen.media)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _write_file(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Create `path`, let `write` fill it, flush and fsync it; an OSError carries the file's name."""
    try:
        with open(path, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename is None and e.errno is not None:  # (an errno-less OSError keeps its message)
            e.filename = str(path)
        raise


def _remove_dir_atomic(path: Path) -> None:
    """Rename first, then delete: a crash mid-delete leaves a hidden trash dir, never a partial `step_*`."""
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _json_safe(obj: Any) -> Any:
    """Strict JSON: non-finite floats as strings ("inf", "nan"), paths as strings, tuples as lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.generic,)):
        return _json_safe(obj.item())
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return _json_safe(obj.item())
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"meta.json cannot hold a {type(obj).__name__}")


# --------------------------------------------------------------------------------------------------------------------
# What train_state.pt may hold
# --------------------------------------------------------------------------------------------------------------------
_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def check_plain(obj: Any, where: str = "train_state") -> None:
    """Raise TypeError naming the first value that `torch.load(weights_only=True)` would refuse.

    Checked at save time so that a run never writes a checkpoint it cannot resume from (the original's D18).
    """
    if isinstance(obj, _PLAIN_SCALARS) or isinstance(obj, (Tensor, torch.Size, torch.dtype, torch.device)):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            check_plain(k, f"{where} key {k!r}")
            check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple, set):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint's train state holds only tensors and "
        "plain Python data (dict, list, tuple, int, float, str, bool, None): convert it (numpy -> torch.as_tensor or .tolist())"
    )


# --------------------------------------------------------------------------------------------------------------------
# RNG states as plain data
# --------------------------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), Python and numpy RNG states, as tensors and plain Python data."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np_keys.astype(np.int64)),  # uint32 in numpy; int64 holds it exactly
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`. CUDA states are restored for as many devices as both sides have."""
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda_states[i].cpu(), i)
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )


# --------------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------------
def _flat_weights(modules: Mapping[str, nn.Module | Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """{"<module>.<state_dict key>": CPU tensor}, each with its own contiguous storage.

    safetensors refuses tensors that share memory (tied weights) or are not contiguous, so those are cloned; everything
    else is only moved to the CPU (no copy when it is already there).
    """
    flat: dict[str, Tensor] = {}
    seen_storages: set[int] = set()
    for name, m in modules.items():
        if not name or "." in name:
            raise ValueError(f"module name {name!r} must be non-empty and contain no '.' (it prefixes the weight keys)")
        state = m.state_dict() if isinstance(m, nn.Module) else m
        for key, t in state.items():
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}.{key} is a {type(t).__name__}, not a tensor; weights.safetensors holds tensors only")
            t = t.detach().to("cpu")
            storage = t.untyped_storage()
            whole = t.is_contiguous() and t.storage_offset() == 0 and storage.nbytes() == t.numel() * t.element_size()
            if storage.data_ptr() in seen_storages or not whole:
                t = t.clone(memory_format=torch.contiguous_format)
            elif t.numel() > 0:
                seen_storages.add(storage.data_ptr())
            flat[f"{name}.{key}"] = t
    return flat


def save_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    step: int,
    modules: Mapping[str, nn.Module | Mapping[str, Tensor]],
    train_state: Mapping[str, Any],
    meta: Mapping[str, Any],
    keep_last: int,
    best: bool = False,
) -> Path:
    """Write `<checkpoint_dir>/step_<step>/` atomically, update `last.json` (and `best.json` if `best`), prune old ones.

    modules: name -> module or state dict (name without '.'); train_state: tensors and plain Python data only
    (see `check_plain`); meta: JSON-able (config dict, metrics). keep_last: how many step checkpoints to keep
    (0 = all); the one `best.json` names and the one just written are never deleted. Returns the checkpoint directory.
    """
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, not {keep_last}")
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    check_plain(dict(train_state))
    weights = _flat_weights(modules)
    meta_doc = _json_safe(
        {**dict(meta), "step": int(step), "wubugen_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    )

    final = root / step_dir_name(step)
    tmp = root / f"{_TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        # through Python file objects: a full disk or an I/O error is an OSError naming the file (torch.save and
        # safetensors' own writers turn it into a RuntimeError or worse)
        blob = safetensors.torch.save(weights, metadata={"format": "pt", "step": str(step)})
        _write_file(tmp / WEIGHTS_FILE, lambda f, data=blob: f.write(data))
        blob = b""  # the serialized weights go as soon as they are on disk
        _write_file(tmp / TRAIN_STATE_FILE, lambda f: torch.save(dict(train_state), f))
        meta_bytes = (json.dumps(meta_doc, indent=2, allow_nan=False) + "\n").encode()
        _write_file(tmp / META_FILE, lambda f: f.write(meta_bytes))
        _fsync_dir(tmp)
        if final.exists():
            # The same step saved again (e.g. the epoch-end save after a step save). A directory cannot be renamed
            # over a non-empty one, so the old one steps aside first; the gap between the two renames is microseconds.
            _remove_dir_atomic(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)

    pointer = {"checkpoint": final.name, "step": int(step)}
    _write_json_atomic(root / LAST_POINTER, pointer)
    if best:
        _write_json_atomic(root / BEST_POINTER, pointer)
    _prune(root, keep_last, keep={final.name})
    return final


def list_checkpoints(checkpoint_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete `step_*` checkpoint directories, oldest step first."""
    root = Path(checkpoint_dir)
    found = []
    for p in root.iterdir() if root.is_dir() else []:
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _read_pointer(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read checkpoint pointer {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("checkpoint"), str):
        raise UserError(f"{path} is not a checkpoint pointer (expected {{\"checkpoint\": \"step_...\"}})")
    return doc


def _prune(root: Path, keep_last: int, keep: set[str]) -> None:
    protected = set(keep)
    best_ptr = root / BEST_POINTER
    if best_ptr.is_file():
        protected.add(_read_pointer(best_ptr)["checkpoint"])
    if keep_last > 0:
        ckpts = list_checkpoints(root)
        protected.update(p.name for p in ckpts[-keep_last:])
        for p in ckpts:
            if p.name not in protected:
                _remove_dir_atomic(p)
    # Leftovers of saves or deletions that a crash interrupted; a live process's temp dir is left alone.
    for p in root.iterdir():
        if p.name.startswith(_TRASH_PREFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(_TMP_PREFIX) and p.is_dir():
            m = re.search(r"-(\d+)-[0-9a-f]{8}$", p.name)
            if m and not _pid_alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------------
# Finding and loading
# --------------------------------------------------------------------------------------------------------------------
def _check_complete(d: Path) -> Path:
    missing = [n for n in CHECKPOINT_FILES if not (d / n).is_file()]
    if missing:
        raise UserError(f"checkpoint {d} is incomplete: {', '.join(missing)} missing")
    return d


def _follow_pointer(pointer: Path) -> Path:
    name = _read_pointer(pointer)["checkpoint"]
    if not _STEP_DIR.match(name):
        raise UserError(f"{pointer} names {name!r}, which is not a checkpoint of this run (expected step_<number>)")
    target = pointer.parent / name
    if not target.is_dir():
        have = ", ".join(p.name for p in list_checkpoints(pointer.parent)) or "none"
        raise UserError(f"{pointer} names {target.name}, which does not exist (checkpoints there: {have})")
    return _check_complete(target)


def resolve_checkpoint(path: str | os.PathLike[str], prefer: Literal["last", "best"] = "last") -> Path:
    """A checkpoint directory from: a checkpoint directory, a run (checkpoint_dir) directory, or a pointer file.

    For a run directory, `prefer` picks `last.json` or `best.json`. Anything else is a UserError naming the path.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint path {p} does not exist")
    if p.is_file():
        if p.suffix != ".json":
            raise UserError(
                f"{p} is not a wubugen checkpoint: give a step_* directory, a run directory with last.json, "
                "or a last.json/best.json file (old single-file .pt checkpoints are not supported)"
            )
        return _follow_pointer(p)
    if (p / WEIGHTS_FILE).is_file():
        return _check_complete(p)
    pointer = p / (BEST_POINTER if prefer == "best" else LAST_POINTER)
    if pointer.is_file():
        return _follow_pointer(pointer)
    have = [q.name for q in list_checkpoints(p)]
    if have:
        raise UserError(f"{p} has checkpoints ({', '.join(have)}) but no {pointer.name}; give one of them directly")
    raise UserError(
        f"{p} is not a wubugen checkpoint: expected a step_* directory with {WEIGHTS_FILE}, a run directory with "
        f"{LAST_POINTER}, or a pointer file"
    )


@dataclass
class Checkpoint:
    path: Path
    weights: dict[str, dict[str, Tensor]]  # module name -> state dict
    train_state: dict[str, Any]
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def _load_train_state(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        # weights_only: tensors and plain data only; a pickle that names any other global (os.system, ...) is refused
        # before anything is called.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (it names {found.group(1)})" if found else ""
        raise UserError(f"refusing to unpickle {path}: it holds objects other than tensors and plain data{what}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a train-state dict")
    return state


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", prefer: Literal["last", "best"] = "last"
) -> Checkpoint:
    """Read a checkpoint (see `resolve_checkpoint` for what `path` may be) without unpickling arbitrary objects."""
    d = resolve_checkpoint(path, prefer)
    try:
        flat = safetensors.torch.load_file(str(d / WEIGHTS_FILE), device=str(map_location))
    except (safetensors.SafetensorError, OSError) as e:
        raise UserError(f"cannot read {d / WEIGHTS_FILE}: {e}") from None
    weights: dict[str, dict[str, Tensor]] = {}
    for key, t in flat.items():
        module, _, name = key.partition(".")
        weights.setdefault(module, {})[name] = t
    train_state = _load_train_state(d / TRAIN_STATE_FILE, map_location)
    try:
        meta = json.loads((d / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {d / META_FILE}: {e}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{d / META_FILE} is malformed: a JSON object expected, not {type(meta).__name__}")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{d / META_FILE} is malformed: its \"step\" is {step!r}, not a step number")
    if "config" in meta and not isinstance(meta["config"], dict):
        raise UserError(f"{d / META_FILE} is malformed: its \"config\" is not a table of options")
    return Checkpoint(path=d, weights=weights, train_state=train_state, meta=meta)


# options added after checkpoints were written, whose default differs from what those runs did: a stored config
# without the key was built with the value given here (section, key, value then)
BEHAVIOUR_ADDED = (("model", "predict_residual", False), ("model", "predict_skip_frames", 0))


def stored_config(c: Checkpoint):
    """The options a checkpoint was written with (its meta.json), as a Config; a UserError naming the file if they
    are missing or not valid options."""
    from wubugen.config import config_from_dict

    where = c.path / META_FILE
    if not isinstance(c.meta.get("config"), dict):
        raise UserError(f"{where} is malformed: it holds no \"config\" (the run's options)")
    stored = c.meta["config"]
    for section, key, old in BEHAVIOUR_ADDED:  # written before the option existed: built the way it was then
        if isinstance(stored.get(section), dict) and key not in stored[section]:
            stored = {**stored, section: {**stored[section], key: old}}
    try:
        return config_from_dict(stored)
    except UserError as e:
        raise UserError(f"{where}: the stored options are not valid: {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{where} is malformed: its \"config\" cannot be read as options ({e})") from None


def run_dir_of(path: str | os.PathLike[str]) -> Path:
    """The run directory a checkpoint path belongs to: a step_* directory's or a pointer file's parent, else itself."""
    p = Path(path)
    if p.is_file() or _STEP_DIR.match(p.name):
        return p.parent
    return p


# --------------------------------------------------------------------------------------------------------------------
# Putting weights into a module
# --------------------------------------------------------------------------------------------------------------------
# Parameters earlier versions had and this one dropped because they could never learn: the module a checkpoint stores
# under this name ("model", "disc") -> its state-dict key -> why. A checkpoint holding one loads without it, strictly
# or not; its optimizer state and a positional EMA state lose its entry (without_dropped_parameters,
# ema_state_by_name). What the model computes is unchanged, since the parameter had no effect.
DROPPED_PARAMETERS: dict[str, dict[str, str]] = {
    "model": {"motion.region_score.bias": "one bias on every region's score, which the softmax over regions ignores"},
}


def _with_dropped(names: list[str], dropped: set[str]) -> list[str] | None:
    """Parameter names in a module's order, with each dropped key put back where the earlier version had it: right
    after the last parameter of its submodule (a bias after its weight, as nn.Linear registers them). None where a
    dropped key's submodule has no parameter left to place it by."""
    order = list(names)
    for key in sorted(dropped):
        prefix = key.rsplit(".", 1)[0] + "."
        at = [i for i, n in enumerate(order) if n.startswith(prefix)]
        if not at:
            return None
        order.insert(at[-1] + 1, key)
    return order


@dataclass
class LoadReport:
    """What did not match between a module and a stored state dict, by state-dict key."""

    missing: list[str] = field(default_factory=list)  # in the module, not in the checkpoint: left as initialised
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the module: ignored
    shape_mismatch: list[str] = field(default_factory=list)  # in both with different shapes: left as initialised
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # key -> (module, checkpoint)
    loaded: int = 0

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self, limit: int = 8) -> str:
        """One line, e.g. "missing: a.w, a.b; shape mismatch: c.w (module (4, 3), checkpoint (2, 3))"."""

        def names(keys: list[str], with_shapes: bool = False) -> str:
            shown = [f"{k} (module {self.shapes[k][0]}, checkpoint {self.shapes[k][1]})" if with_shapes else k for k in keys[:limit]]
            more = f", ... and {len(keys) - limit} more" if len(keys) > limit else ""
            return ", ".join(shown) + more

        parts = []
        if self.missing:
            parts.append(f"missing from checkpoint: {names(self.missing)}")
        if self.unexpected:
            parts.append(f"not in the model: {names(self.unexpected)}")
        if self.shape_mismatch:
            parts.append(f"shape mismatch: {names(self.shape_mismatch, True)}")
        return "; ".join(parts) if parts else "all tensors matched"


def load_module_weights(module: nn.Module, state: Mapping[str, Tensor], strict: bool, name: str = "module") -> LoadReport:
    """Load `state` (state-dict keys, as `Checkpoint.weights[name]`) into `module`.

    strict: any missing, unexpected or mis-shaped tensor is a UserError listing them, and nothing is loaded.
    Not strict: the tensors whose key and shape match are loaded, the rest reported. Spectral-norm (`weight_orig`,
    `weight_u`) and parametrized (`parametrizations.weight.original`) modules need nothing special: their state-dict keys
    are what is compared.
    """
    own = module.state_dict()
    dropped = DROPPED_PARAMETERS.get(name, {})
    state = {k: v for k, v in state.items() if k in own or k not in dropped}
    report = LoadReport()
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    for k in own:
        if k in state and tuple(own[k].shape) != tuple(state[k].shape):
            report.shape_mismatch.append(k)
            report.shapes[k] = (tuple(own[k].shape), tuple(state[k].shape))
    if strict and not report.clean:
        raise UserError(f"checkpoint weights for {name} do not match the model ({report.summary()}); "
                        "use --load_strict false to load the matching tensors only")
    matching = {k: v for k, v in state.items() if k in own and k not in report.shapes}
    module.load_state_dict(matching, strict=False)
    report.loaded = len(matching)
    return report


def without_dropped_parameters(stored_opt: dict[str, Any], stored_weights: Mapping[str, Tensor],
                               module: nn.Module, name: str = "model") -> dict[str, Any]:
    """An optimizer state dict saved with `module`'s trainable parameters plus some of DROPPED_PARAMETERS[name], without
    their entries. Torch numbers an optimizer's parameters in the order they were given, here the module's trainable
    parameters in named_parameters order; the stored weights say only which keys were there (a safetensors file
    lists its keys sorted by name, not in the module's order). Anything else: unchanged."""
    own_state = module.state_dict()
    dropped = {k for k in stored_weights if k in DROPPED_PARAMETERS.get(name, {}) and k not in own_state}
    if not dropped:
        return stored_opt
    old = _with_dropped([n for n, p in module.named_parameters() if p.requires_grad], dropped)
    if old is None or sum(len(g["params"]) for g in stored_opt["param_groups"]) != len(old):
        return stored_opt  # not the layout this knows: torch's own load reports the mismatch
    gone = {i for i, k in enumerate(old) if k in dropped}
    renumber: dict[int, int] = {}
    groups = []
    for g in stored_opt["param_groups"]:
        kept = []
        for i in g["params"]:
            if i not in gone:
                renumber[i] = len(renumber)
                kept.append(renumber[i])
        groups.append({**g, "params": kept})
    state = {renumber[i]: v for i, v in stored_opt["state"].items() if i in renumber}
    return {**stored_opt, "state": state, "param_groups": groups}


def ema_state_by_name(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """An EMA state from a checkpoint -> name -> tensor. Checkpoints written before EMA states were keyed by name hold
    every parameter of `model` under its position ("0", "1", ...); those positions are mapped to names."""
    if state and all(k.isdigit() for k in state):
        names = [n for n, _ in model.named_parameters()]
        if len(state) != len(names):  # perhaps saved with a parameter this version dropped (DROPPED_PARAMETERS)
            subs = dict(model.named_modules())
            dropped = {k for k in DROPPED_PARAMETERS["model"] if k.rsplit(".", 1)[0] in subs and k not in names}
            old = _with_dropped(names, dropped)
            if old is not None and len(old) == len(state):
                return {n: state[str(i)] for i, n in enumerate(old) if n not in dropped}
        return {n: state[str(i)] for i, n in enumerate(names) if str(i) in state}
    return dict(state)  # keyed by name (with the warm-up's update count from this version on)


def load_trained(path: str, device: torch.device, prefer: Literal["last", "best"] = "best", use_ema: bool = True):
    """(config, model in eval mode, the Checkpoint) from a checkpoint directory, a run directory or a pointer file;
    with `use_ema` the EMA's weights when the checkpoint has them (what `wubugen sample` and `evaluate` use)."""
    from wubugen.models.vaegan import build_model

    c = load_checkpoint(resolve_checkpoint(path, prefer=prefer), map_location="cpu")
    cfg = stored_config(c)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.geometry)
    load_module_weights(model, c.weights["model"], strict=True, name="model")
    if use_ema and "ema" in c.weights:
        state = ema_state_by_name(c.weights["ema"], model)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state:  # frozen parameters (a frozen flow net) have no EMA: their weights are the model's
                    p.copy_(state[n])
    return cfg, model.to(device).eval(), c
