"""The processed-layout reader train_fv2es.py uses, for IEMOCAP, CMU-MOSEI and the text-only MELD conversion
(preprocess.meld_to_fv2es) alike (layout: preprocess.fv2es_layout).

    from preprocess.fv2es_reader import read_processed
    items, splits, failures = read_processed("data/iemocap", "iemocap")   # or ("data/mosei", "mosei")

Each utterance/clip becomes an Item: its folder, text, a float32 (C,) label (one-hot for IEMOCAP and MELD, presence
for MOSEI, in the class order of preprocess.iemocap.EMOTIONS / preprocess.mosei.EMOTIONS / preprocess.meld.EMOTIONS),
the speaker's side (IEMOCAP), and its dialogue/video and session (IEMOCAP) for grouped splits.
"""
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import InputError
from preprocess import iemocap, meld, mosei
from preprocess.fv2es_layout import LAYOUT

CLASS_NAMES = {"iemocap": iemocap.EMOTIONS, "mosei": mosei.EMOTIONS, "meld": meld.EMOTIONS}


@dataclass
class Item:
    id: str
    folder: Path
    text: str
    label: np.ndarray   # float32 (C,): one-hot (IEMOCAP, MELD) or presence (MOSEI)
    side: str           # 'L'/'R' for IEMOCAP, '' otherwise
    group: str          # dialogue or video: splits never cut one
    session: int        # IEMOCAP session, 0 otherwise


def _label_vector(label, names, where):
    if isinstance(label, str):
        if label not in names:
            raise InputError(f"{where}: label {label!r} is none of {', '.join(names)}")
        vector = np.zeros(len(names), np.float32)
        vector[names.index(label)] = 1
        return vector
    try:
        if np.ndim(label) == 0:
            if not 0 <= int(label) < len(names):
                raise IndexError
            vector = np.zeros(len(names), np.float32)
            vector[int(label)] = 1
            return vector
        vector = np.asarray(label, np.float32).reshape(-1)
    except (TypeError, ValueError, IndexError, OverflowError):
        raise InputError(f"{where}: label {str(label)[:40]!r} is not a class name, class index or {len(names)}-vector") from None
    if not np.isfinite(vector).all():
        raise InputError(f"{where}: label holds NaN or inf")
    if len(vector) != len(names):
        raise InputError(f"{where}: label has {len(vector)} values, expected {len(names)}")
    return (vector > 0).astype(np.float32)


def read_meta(folder):
    """meta.json (ours) or meta.pkl (the released processed sets; the only pickle this project reads)."""
    for name in ("meta.json", "meta.pkl"):
        if (folder / name).is_file():
            try:
                if name == "meta.json":
                    meta = json.loads((folder / name).read_text(encoding="utf-8"))
                else:
                    with open(folder / name, "rb") as file:
                        meta = pickle.load(file)
            except Exception as error:  # json and pickle raise many types for a corrupt file
                raise InputError(f"{folder / name}: not readable ({type(error).__name__}: {str(error)[:120]})") from None
            if not isinstance(meta, dict):
                raise InputError(f"{folder / name}: expected {{utterance id: {{label, text, ...}}}}")
            return meta
    raise InputError(f"{folder}: no meta.json or meta.pkl (run python -m preprocess.iemocap / preprocess.mosei)")


def read_processed(datapath, dataset):
    """({id: Item}, {split: [id]}, failures [(id, problem)]) from <datapath>/<DATASET>_RAW_PROCESSED and
    <DATASET>_SPLIT. An entry whose label does not parse is skipped and listed, and so is a split id that has
    no usable entry; an unreadable meta or split file, or nothing usable at all, is one InputError."""
    processed_dir, split_dir = Path(datapath) / LAYOUT[dataset][0], Path(datapath) / LAYOUT[dataset][1]
    meta = read_meta(processed_dir)
    names = CLASS_NAMES[dataset]
    items, failures = {}, []
    for key, entry in meta.items():
        where = f"{processed_dir}/meta: {key}"
        try:
            if not isinstance(entry, dict) or "label" not in entry:
                raise InputError(f"{where}: expected {{label, text, ...}}")
            label = _label_vector(entry["label"], names, where)
        except InputError as error:
            failures.append((key, str(error)))
            continue
        if dataset == "iemocap":
            group = key.rsplit("_", 1)[0]
            items[key] = Item(key, processed_dir / group / key, str(entry.get("text", "")), label, iemocap.speaker_side(key), group, iemocap.session_of(key))
        else:  # MOSEI `<video>_<clip>`, MELD `<split>_dia<D>_utt<U>`: the group is the id without its last part
            items[key] = Item(key, processed_dir / key, str(entry.get("text", "")), label, "", str(entry.get("video", key.rsplit("_", 1)[0])), 0)
    if not items:
        raise InputError(f"{processed_dir}: no usable utterance in meta ({failures[0][1] if failures else 'it is empty'})")
    splits = {}
    for split in ("train", "valid", "test"):
        path = split_dir / f"{split}_split.txt"
        if not path.is_file():
            raise InputError(f"{path}: split file not found")
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        failures += [(i, f"{path}: listed but has no usable entry in meta") for i in ids if i not in items and i not in meta]
        splits[split] = [i for i in ids if i in items]
    return items, splits, failures
