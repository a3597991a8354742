"""What every train_*.py script repeats, in one short file: clear errors, seeding, `--device auto`,
torchrun/DDP set-up, moving batches to the device, atomic files, checkpoints and training state for --resume,
run folders with failures.csv, and metric reports on scikit-learn.

    from common import InputError, run_main, add_logistics_args, seed_everything, ...
"""
import argparse
import csv
import ctypes
import json
import os
import random
import shlex
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn import metrics as skm


class InputError(Exception):
    """Bad user input (a file, a flag, a dataset). The message is one line that names the file and the
    problem; scripts print it without a traceback and exit non-zero."""


def run_main(main):
    """Call `main()`; an InputError becomes one `error: ...` line on stderr and exit status 2.
    `--debug` anywhere on the command line shows the full traceback instead."""
    try:
        return main()
    except InputError as error:
        if "--debug" in sys.argv:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def add_logistics_args(parser, *, default_seed=0):
    """The flags every script shares, in their own argparse group."""
    group = parser.add_argument_group("Logistics")
    group.add_argument("--seed", type=int, default=default_seed, help="random seed for torch, numpy and random (default %(default)s)")
    group.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default %(default)s)")
    group.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors (default: off)")
    return group


def seed_everything(seed, *, deterministic=False):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name="auto"):
    """'auto' picks CUDA when present (the torchrun LOCAL_RANK device) and the CPU otherwise."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        if name == "cuda":
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(name)


def keep_freed_memory(device):
    """Training on the CPU: glibc's malloc serves blocks over 32 MB (a batch's activations) with a fresh mmap
    and unmaps them on free, so every step page-faults its activations in again. M_MMAP_MAX 0 serves them from the
    heap, and an M_TRIM_THRESHOLD of 2 GiB keeps freed heap for reuse: faster steps for a higher peak RSS
    (fragmentation); bench/malloc.py measures both. KEEP_FREED_MEMORY=0 in the environment turns it off; no-op on
    CUDA or without glibc."""
    if device.type != "cpu" or not sys.platform.startswith("linux") or os.environ.get("KEEP_FREED_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # malloc.h
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def setup_distributed(device):
    """DDP from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): nccl on CUDA, gloo on CPU.
    Without torchrun this is a no-op that returns a single-process Distributed()."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return Distributed()
    dist = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist


def cleanup_distributed(dist):
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(dist):
    """Wait for every rank (no-op in a single process)."""
    if dist.enabled:
        torch.distributed.barrier()


def broadcast_object(dist, value):
    """Rank 0's `value` on every rank (e.g. the run folder rank 0 created)."""
    if not dist.enabled:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def rank_share(items, dist):
    """This rank's strided share of `items` (all of them in a single process): extraction shards and batch shards."""
    return list(items)[dist.rank::dist.world_size]


def global_mean(loss_sum, count, dist):
    """Per-rank loss such that DDP's gradient average equals the gradient of sum / count over the GLOBAL batch,
    also when the ranks hold different numbers of items (dialogues of different lengths, masked seconds):
    loss_sum * world_size / (count summed over the ranks). In one process: loss_sum / count."""
    count = torch.as_tensor(count, dtype=torch.float32, device=loss_sum.device).detach().clone()
    if dist.enabled:
        torch.distributed.all_reduce(count)
    return loss_sum * dist.world_size / count.clamp_min(1e-12)


def autocast(device, enabled):
    """bf16 autocast of the forward pass when `enabled` (--amp); a no-op context otherwise. Meant for CUDA
    (tensor cores); on the CPU it runs too, mostly slower, and is there for testing the code path."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(enabled))


def to_device(batch, device):
    """A batch (tensors inside dicts, tuples and lists, any depth) on `device`. On CUDA host tensors are page-locked
    first (a no-op for a DataLoader's pinned batches), so the copies run asynchronously."""
    if isinstance(batch, torch.Tensor):
        if device.type == "cuda" and batch.device.type == "cpu":
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def atomic_write(path, write, *, binary=True):
    """Write through `write(file)` into a temp file beside `path`, then rename it over `path`, so a crash
    never leaves a half-written file. Raises InputError naming the path when the folder is not writable."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise InputError(f"{path}: cannot write here ({error.strerror})") from None
    try:
        with os.fdopen(handle, "wb" if binary else "w", encoding=None if binary else "utf-8") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except OSError as error:
        Path(temp_name).unlink(missing_ok=True)
        raise InputError(f"{path}: write failed ({error.strerror})") from None
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def write_json(path, payload):
    return atomic_write(path, lambda file: json.dump(payload, file, indent=2, ensure_ascii=False, default=_jsonable), binary=False)


def write_failures(folder, failures):
    """folder/failures.csv: a header `item,problem`, then one row per skipped item [(item, problem)]."""
    return atomic_write(Path(folder) / "failures.csv", lambda file: csv.writer(file).writerows([("item", "problem"), *failures]),
                        binary=False)


# what np.load raises on a cut-short or corrupt .npy / .npz (a bad zip member, a failed CRC, a missing array)
UNREADABLE_ARRAY_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_checkpoint(path, state):
    """Atomic torch.save of plain tensors, numbers, strings, lists and dicts (loadable with weights_only)."""
    return atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: not a readable checkpoint ({reason[:200]})") from None


def numpy_rng_state():
    """numpy's global MT19937 state as one int64 tensor (624 keys + position), storable with weights_only."""
    _, keys, position, _, _ = np.random.get_state()
    return torch.from_numpy(np.append(keys.astype(np.int64), position))


def save_training_state(path, *, model, optimizer, scheduler=None, epoch, best_score, best_epoch, ema=None, total_steps=None):
    """last.pt for --resume: weights, optimizer, any LR scheduler (or None), torch and numpy RNG, the selection state,
    a weight-averaging model (torch.optim.swa_utils.AveragedModel) when given, and the schedule's length:
    `total_steps`, by default the scheduler's own (OneCycleLR has one); None for a schedule that does not depend on
    the run's length."""
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict() if scheduler is not None else None,
                           "rng": torch.get_rng_state(), "numpy_rng": numpy_rng_state(),
                           "epoch": epoch, "best_score": best_score, "best_epoch": best_epoch,
                           "total_steps": total_steps if total_steps is not None else getattr(scheduler, "total_steps", None),
                           "ema": ema.state_dict() if ema is not None else None})


def resume_training_state(path, *, model, optimizer, scheduler=None, ema=None, total_steps=None):
    """Restore what save_training_state wrote; returns (start_epoch, best_score, best_epoch). A schedule with a
    length (`total_steps`, as for save_training_state) must be the interrupted run's (same epochs and batch size),
    or resuming would silently change it."""
    state = load_checkpoint(path)
    total_steps = total_steps if total_steps is not None else getattr(scheduler, "total_steps", None)
    if total_steps is not None and state.get("total_steps") != total_steps:
        raise InputError(f"{path}: --resume needs the interrupted run's epochs and batch size")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:  # scheduler=None: a run with a constant learning rate
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state.get("numpy_rng") is not None:
        keys_and_position = state["numpy_rng"].numpy()
        np.random.set_state(("MT19937", keys_and_position[:-1].astype(np.uint32), int(keys_and_position[-1]), 0, 0.0))
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    return state["epoch"] + 1, state["best_score"], state["best_epoch"]


def load_pretrained(class_name, name):
    """A transformers `class_name` (e.g. "ViTModel") from a hub name or a local folder, in eval mode; a
    missing model (offline, or a wrong path) is one InputError that says how to supply a local copy."""
    import transformers
    try:
        model = getattr(transformers, class_name).from_pretrained(name)
    except (OSError, ValueError) as error:
        raise InputError(f"{name}: cannot load {class_name} ({str(error).splitlines()[0][:160]}); give a local folder "
                         f"saved with save_pretrained, or run once online with HF_HUB_OFFLINE=0") from None
    return model.eval()


def load_torchvision_weights(path, arch):
    """A torchvision `arch` (e.g. "resnet18") state dict from a .pth file, or from `arch`*.pth inside a folder."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob(f"{arch}*.pth"))
        if not candidates:
            raise InputError(f"{path}: no {arch}*.pth inside (torchvision ImageNet weights expected)")
        path = candidates[0]
    if not path.is_file():
        raise InputError(f"{path}: {arch} weights not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def make_run_dir(out, args, *, default_root):
    """Create the run folder (`--out`, or a new numbered folder under `default_root`) and write args.json
    with the exact command line. Returns the folder as a Path."""
    if out:
        run_dir = Path(out)
    else:
        root = Path(default_root)
        existing = [int(p.name) for p in root.glob("[0-9]*") if p.name.isdigit()] if root.is_dir() else []
        run_dir = root / f"{max(existing, default=0) + 1:03d}"
    write_json(run_dir / "args.json", {"command": command_line(), "args": vars(args)})
    return run_dir


def command_line():
    return " ".join(shlex.quote(part) for part in [Path(sys.executable).name, *sys.argv])


# ---------------------------------------------------------------- metrics

def classification_report(labels, predictions, *, class_names, train_labels=None):
    """Single-label classification metrics (scikit-learn). The majority baseline predicts the most
    frequent class of `train_labels` (of `labels` when none are given, which `majority_source` states)."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    class_ids = list(range(len(class_names)))
    reference = np.asarray(train_labels) if train_labels is not None else labels
    majority_class = int(np.bincount(reference, minlength=len(class_names)).argmax())
    majority_predictions = np.full_like(labels, majority_class)
    per_class = skm.f1_score(labels, predictions, labels=class_ids, average=None, zero_division=0)
    return {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, predictions)),
        "macro_f1": float(skm.f1_score(labels, predictions, labels=class_ids, average="macro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(labels, predictions, labels=class_ids, average="weighted", zero_division=0)),
        "per_class_f1": {name: float(score) for name, score in zip(class_names, per_class)},
        "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=class_ids).tolist(),
        "majority_class": class_names[majority_class],
        "majority_source": "train" if train_labels is not None else "evaluated split",
        "majority_baseline_accuracy": float(skm.accuracy_score(labels, majority_predictions)),
        "majority_baseline_macro_f1": float(skm.f1_score(labels, majority_predictions, labels=class_ids, average="macro", zero_division=0)),
        "majority_baseline_weighted_f1": float(skm.f1_score(labels, majority_predictions, labels=class_ids, average="weighted", zero_division=0)),
    }


def best_f1_threshold(labels, scores, *, grid=None):
    """The threshold in `grid` (default 0.05, 0.10, ..., 0.95) with the highest F1. Call it on validation
    data only; apply the result to test."""
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2) if grid is None else np.asarray(grid)
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores)
    f1_by_threshold = [skm.f1_score(labels, (scores >= t).astype(int), zero_division=0) for t in grid]
    return float(grid[int(np.argmax(f1_by_threshold))])


def binary_report(labels, scores, *, thresholds):
    """Binary detection metrics: F1/precision/recall at each named threshold ({"name": value}), AP, AUROC,
    and the all-positive baseline (predict every item positive)."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    both_classes = 0 < labels.sum() < len(labels)
    report = {
        "n": int(len(labels)),
        "positive_rate": float(labels.mean()) if len(labels) else 0.0,
        "average_precision": float(skm.average_precision_score(labels, scores)) if both_classes else float("nan"),
        "auroc": float(skm.roc_auc_score(labels, scores)) if both_classes else float("nan"),
        "all_positive_f1": float(skm.f1_score(labels, np.ones_like(labels), zero_division=0)),
    }
    for name, threshold in thresholds.items():
        predicted = (scores >= threshold).astype(int)
        report[f"f1@{name}"] = float(skm.f1_score(labels, predicted, zero_division=0))
        report[f"precision@{name}"] = float(skm.precision_score(labels, predicted, zero_division=0))
        report[f"recall@{name}"] = float(skm.recall_score(labels, predicted, zero_division=0))
        report[f"threshold@{name}"] = float(threshold)
    return report


def format_table(rows, columns):
    """Plain-text table of dict rows; floats to 3 decimals."""
    cells = [[f"{row.get(c):.3f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def parse_ids(text, *, flag):
    """'1,2,5-7' -> [1, 2, 5, 6, 7] for --test-actors style flags."""
    ids = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, _, high = part.partition("-")
            ids.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated numbers or ranges like 1,2,5-7") from None
    return ids


def progress(iterable, *, enabled=True, **kwargs):
    """A tqdm bar on stderr (rank 0 only; pass enabled=dist.is_main)."""
    from tqdm.auto import tqdm
    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)


def ensure_writable(folder):
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{folder}: cannot create output folder ({error.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"{folder}: output folder is not writable")
    return folder


def argument_parser(doc):
    """ArgumentParser whose description is the script's docstring, shown verbatim in -h."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
