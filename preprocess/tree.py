"""The files of a dataset folder at any depth, for every dataset parser: symbolic links to folders are followed
(a dataset assembled from links to speaker or session folders is scanned like real folders; `Path.rglob` does not
follow them before Python 3.13), each real folder is entered once, so a link loop ends.

    from preprocess.tree import walk_files
    walk_files("data/ravdess", {".mp4", ".wav"})   # sorted paths, named through the links as found
"""
import os
from pathlib import Path


def walk_files(root, suffixes=None):
    """Sorted paths of the regular files (or links to them) under root, keeping only the lower-case `suffixes` when
    given. A folder reached twice (a loop, or two links to one folder) is read the first time only, in name order."""
    entered, found = set(), []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in entered:
            subfolders[:] = []
            continue
        entered.add(real)
        subfolders.sort()
        for name in names:
            path = Path(folder) / name
            if (suffixes is None or path.suffix.lower() in suffixes) and path.is_file():
                found.append(path)
    return sorted(found)
