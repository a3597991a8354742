"""Per-file array cache: decode or encode a file once, keep the result as .npy under a hashed name.

The name hashes the source path, its size and modification time, and the settings that produced the
array, so an edited file or a changed flag gives a new entry. Files are written to a temp name and
renamed; an unreadable entry (e.g. cut short by a full disk) is rebuilt, never trusted.
"""
import hashlib
import json
from pathlib import Path

import numpy as np

from common import UNREADABLE_ARRAY_ERRORS, atomic_write


def cache_path(cache_dir, source, settings):
    source = Path(source)
    stat = source.stat()
    fingerprint = json.dumps([str(source.resolve()), stat.st_size, stat.st_mtime_ns, settings], sort_keys=True, default=str)
    digest = hashlib.sha1(fingerprint.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{source.stem[:40]}-{digest}.npy"


def ensure_cached(cache_dir, source, settings, compute):
    """Path of the cached `compute()` (np.ndarray) for (source, settings); computed only when missing or corrupt."""
    path = cache_path(cache_dir, source, settings)
    if path.is_file():
        try:
            np.load(path, mmap_mode="r", allow_pickle=False)  # parses the header and checks the size
            return path
        except UNREADABLE_ARRAY_ERRORS:
            pass  # corrupt entry: rebuild below
    array = np.ascontiguousarray(compute())
    atomic_write(path, lambda file: np.save(file, array, allow_pickle=False))
    return path


def cached_array(cache_dir, source, settings, compute):
    return np.load(ensure_cached(cache_dir, source, settings, compute), allow_pickle=False)
