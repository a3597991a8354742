"""Nothing lost: `kill -9` of a fixture training run once its first last.pt exists, then `--resume`, lands on the
metrics of one uninterrupted run with the same seed (CPU, one thread), for train_highlight.py, train_meld.py
and train_gnn.py's gnn stage (train_av.py and train_fv2es.py have theirs in their own test files). The uninterrupted and the resumed runs run in this process; only the killed one is a
real process."""
import json
import os
import sys

import pytest

import train_highlight
import train_meld
from common import InputError
from preprocess.fixtures.aihub import make_aihub
from preprocess.fixtures.meld import make_meld
from processes import kill_after_first_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # the killed process computes like the in-process runs


def test_highlight_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    data = tmp_path / "aihub"
    make_aihub(data, categories=("반려동물및동물", "스포츠"), videos_per_category=3, annotators=1, duration_s=40, fps=1,
               height=16, width=16, seed=0)
    flags = ["--data", str(data), "-mod", "a", "--hidden", "16", "--epochs", "12", "--batch-size", "2", "--chunk-seconds", "10",
             "--cache", str(tmp_path / "cache"), "--device", "cpu"]
    clean = train_highlight.main([*flags, "--out", str(tmp_path / "clean")])  # also fills the feature cache
    interrupted = tmp_path / "interrupted"
    kill_after_first_checkpoint([sys.executable, "train_highlight.py", *flags, "--out", str(interrupted)], interrupted, env=ONE_THREAD)
    resumed = train_highlight.main([*flags, "--out", str(interrupted), "--resume"])
    assert resumed["val"] == clean["val"] and resumed["test"] == clean["test"]
    assert json.loads((interrupted / "metrics.json").read_text())["test"] == json.loads((tmp_path / "clean" / "metrics.json").read_text())["test"]


def test_meld_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    data = tmp_path / "meld"
    make_meld(data, seed=0, dialogues_per_split=(8, 3, 3))
    flags = ["--data", str(data), "-mod", "a", "--hidden", "16", "--d-model", "32", "--heads", "4", "--epochs", "12", "--batch-size", "2",
             "--cache", str(tmp_path / "cache"), "--device", "cpu"]
    clean = train_meld.main([*flags, "--out", str(tmp_path / "clean")])
    interrupted = tmp_path / "interrupted"
    kill_after_first_checkpoint([sys.executable, "train_meld.py", *flags, "--out", str(interrupted)], interrupted, env=ONE_THREAD)
    resumed = train_meld.main([*flags, "--out", str(interrupted), "--resume"])
    assert resumed["dev"] == clean["dev"] and resumed["test"] == clean["test"]
    with pytest.raises(InputError, match="--resume needs"):
        train_meld.main([*flags, "--out", str(interrupted), "--resume", "--epochs", "20"])


def test_gnn_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    import shutil
    import train_gnn
    from preprocess.fixtures.kemdy20 import make_kemdy20
    make_kemdy20(tmp_path / "kemdy20", sessions=(1, 2, 3, 4, 5), scripts=(1,))
    flags = ["--val-sessions", "4", "--test-sessions", "5", "--encoder-width", "8", "--encoder-epochs", "1", "--encoder-batch-size", "64",
             "--block-size", "32", "--gnn-epochs", "30", "--device", "cpu"]
    clean = tmp_path / "clean"
    for stage in ("encoders", "features", "graphs"):
        train_gnn.main(["--data", str(tmp_path / "kemdy20"), "--stage", stage, "--out", str(clean), *flags])
    interrupted = tmp_path / "interrupted"
    shutil.copytree(clean, interrupted)  # the cached stages; the gnn stage is what gets killed
    expected = train_gnn.main(["--stage", "gnn", "--out", str(clean), *flags])
    kill_after_first_checkpoint([sys.executable, "train_gnn.py", "--stage", "gnn", "--out", str(interrupted), *flags], interrupted,
                                env=ONE_THREAD, last="gnn_last.pt")
    resumed = train_gnn.main(["--stage", "gnn", "--out", str(interrupted), "--resume", *flags])
    assert resumed["val"] == expected["val"] and resumed["test"] == expected["test"]
