"""common.py: golden metrics, atomic files, checkpoints, one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common
from common import InputError

GOLDEN = json.loads((Path(__file__).parent / "golden" / "metrics.json").read_text())


def assert_close(actual, expected):
    if isinstance(expected, dict):
        for key, value in expected.items():
            assert_close(actual[key], value)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-6)
    else:
        assert actual == expected


def test_classification_report_golden():
    case = GOLDEN["classification"]
    report = common.classification_report(case["labels"], case["predictions"], class_names=case["class_names"],
                                           train_labels=case["train_labels"])
    assert_close(report, case["expected"])
    assert report["majority_source"] == "train"


def test_binary_report_and_threshold_golden():
    case = GOLDEN["binary"]
    expected = dict(case["expected"])
    best = expected.pop("best_threshold")
    report = common.binary_report(case["labels"], case["scores"], thresholds={"0.5": 0.5})
    assert_close(report, expected)
    assert common.best_f1_threshold(case["labels"], case["scores"]) == pytest.approx(best)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "cache.bin"
    target.write_bytes(b"old")

    def crash(file):
        file.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        common.atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


def test_checkpoint_roundtrip_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = common.save_checkpoint(tmp_path / "model.pt", {"model": model.state_dict(), "epoch": 4, "args": {"lr": 0.1}})
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 4 and torch.equal(state["model"]["weight"], model.weight)
    assert common.load_checkpoint(path)["args"] == {"lr": 0.1}


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt: not a readable checkpoint"):
        common.load_checkpoint(bad)
    with pytest.raises(InputError, match="missing.pt: checkpoint not found"):
        common.load_checkpoint(tmp_path / "missing.pt")


def test_run_dir_records_command(tmp_path):
    import argparse
    args = argparse.Namespace(lr=0.5, out=None)
    first = common.make_run_dir(None, args, default_root=tmp_path)
    second = common.make_run_dir(None, args, default_root=tmp_path)
    assert (first.name, second.name) == ("001", "002")
    recorded = json.loads((first / "args.json").read_text())
    assert recorded["args"]["lr"] == 0.5 and "command" in recorded


def test_run_main_prints_one_line_and_exits_2(tmp_path):
    script = "import common\ndef main():\n    raise common.InputError('clip.mp4: no audio stream')\ncommon.run_main(main)\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(common.__file__).parent)
    assert result.returncode == 2
    assert result.stderr == "error: clip.mp4: no audio stream\n"


def test_parse_ids_and_device():
    assert common.parse_ids("1,2,5-7", flag="--test-actors") == [1, 2, 5, 6, 7]
    with pytest.raises(InputError, match="--test-actors"):
        common.parse_ids("a,b", flag="--test-actors")
    assert common.resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            common.resolve_device("cuda")


def test_torchvision_weights_from_file_or_folder(tmp_path):
    import torchvision
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet18-f37072fd.pth")
    loaded = common.load_torchvision_weights(tmp_path, "resnet18")
    assert torch.equal(loaded["fc.weight"], state["fc.weight"])
    with pytest.raises(InputError, match="no resnet50"):
        common.load_torchvision_weights(tmp_path, "resnet50")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_keep_freed_memory_stops_big_tensors_faulting_their_pages_in_again():
    # twenty 80-MB tensors in turn, each fully written: with glibc's default each one is a fresh mmap whose
    # ~19,500 pages fault in; kept heap is mostly reused (a few allocations still grow the heap)
    script = ("import resource, torch, common\n"
              "kept = common.keep_freed_memory(torch.device('cpu'))\n"
              "torch.ones(20_000_000)\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
              "for _ in range(20):\n"
              "    torch.ones(20_000_000)\n"
              "print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {}
    for switch in ("1", "0"):  # KEEP_FREED_MEMORY=0 leaves malloc as it is
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                cwd=Path(common.__file__).parent, env={**os.environ, "KEEP_FREED_MEMORY": switch})
        kept, faults[switch] = result.stdout.split()
        assert kept == str(switch == "1")
    assert int(faults["0"]) > 20 * 19_000  # 20 x 80 MB of 4-KiB pages
    assert int(faults["1"]) < int(faults["0"]) / 3


def test_to_device_moves_nested_batches_and_keeps_other_values():
    batch = {"audio": torch.ones(2, 3), "text": (torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4)),
             "hcf": {"t": torch.ones(2, 5, 3)}, "parts": [torch.ones(1)], "ids": ["a", "b"]}
    moved = common.to_device(batch, torch.device("meta"))
    assert moved["audio"].device.type == "meta" and moved["hcf"]["t"].shape == (2, 5, 3)
    assert isinstance(moved["text"], tuple) and all(t.device.type == "meta" for t in moved["text"])
    assert isinstance(moved["parts"], list) and moved["parts"][0].device.type == "meta"
    assert moved["ids"] == ["a", "b"] and moved["text"][0].dtype == torch.long
    eda, labels = common.to_device([torch.ones(3), torch.arange(3)], torch.device("cpu"))
    assert torch.equal(labels, torch.arange(3))


def test_write_failures_has_one_header(tmp_path):
    import csv
    common.write_failures(tmp_path, [("clip.mp4", "no audio stream"), ("b.wav", "empty, file")])
    with open(tmp_path / "failures.csv", newline="") as file:
        assert list(csv.DictReader(file)) == [{"item": "clip.mp4", "problem": "no audio stream"}, {"item": "b.wav", "problem": "empty, file"}]
    common.write_failures(tmp_path, [])
    assert (tmp_path / "failures.csv").read_text().strip() == "item,problem"


def test_unreadable_array_errors_cover_cut_short_and_corrupt_npz(tmp_path):
    import numpy as np
    good = tmp_path / "good.npz"
    np.savez(good, x=np.arange(1000))
    payload = good.read_bytes()
    for name, data in (("short.npz", payload[:len(payload) // 2]), ("text.npz", b"not an array"), ("empty.npy", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(common.UNREADABLE_ARRAY_ERRORS):
            with np.load(tmp_path / name, allow_pickle=False) as stored:
                stored["x"]
    with pytest.raises(common.UNREADABLE_ARRAY_ERRORS), np.load(good) as stored:
        stored["missing"]


@pytest.mark.parametrize("schedule", ["onecycle", "plateau", "step", "none"])
def test_training_state_resumes_any_scheduler(tmp_path, schedule):
    """Two epochs straight equal one epoch, save, a fresh model/optimizer/scheduler, resume, one more epoch."""
    import numpy as np

    def build():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        scheduler = {"onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=6),
                     "plateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=0),
                     "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
                     "none": lambda: None}[schedule]()
        return model, optimizer, scheduler

    def epoch(model, optimizer, scheduler):
        for _ in range(3):
            loss = (model(torch.randn(8, 4)) - float(np.random.rand())).pow(2).mean()  # both RNGs feed the loss
            optimizer.zero_grad(), loss.backward(), optimizer.step()
            if schedule == "onecycle":
                scheduler.step()
        if schedule == "plateau":
            scheduler.step(-loss.item())
        elif schedule == "step":
            scheduler.step()

    torch.manual_seed(1), np.random.seed(1)
    straight = build()
    torch.manual_seed(1), np.random.seed(1)
    epoch(*straight), epoch(*straight)
    torch.manual_seed(1), np.random.seed(1)
    first = build()
    torch.manual_seed(1), np.random.seed(1)
    epoch(*first)
    model, optimizer, scheduler = first
    common.save_training_state(tmp_path / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler, epoch=0, best_score=0.5, best_epoch=0)
    torch.manual_seed(99), np.random.seed(99)  # resuming must restore both RNGs
    resumed = build()
    assert common.resume_training_state(tmp_path / "last.pt", model=resumed[0], optimizer=resumed[1], scheduler=resumed[2]) == (1, 0.5, 0)
    epoch(*resumed)
    assert torch.equal(resumed[0].weight, straight[0].weight)
    assert resumed[1].param_groups[0]["lr"] == straight[1].param_groups[0]["lr"]


def test_resume_refuses_another_schedule_length(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    common.save_training_state(tmp_path / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler, epoch=0, best_score=0.0,
                               best_epoch=0, total_steps=10)
    with pytest.raises(InputError, match="--resume needs"):
        common.resume_training_state(tmp_path / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler, total_steps=20)
    assert common.resume_training_state(tmp_path / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler, total_steps=10)[0] == 1
    onecycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=7)  # its own length is checked by default
    with pytest.raises(InputError, match="--resume needs"):
        common.resume_training_state(tmp_path / "last.pt", model=model, optimizer=optimizer, scheduler=onecycle)


@pytest.mark.parametrize("script", ["train_av", "train_highlight", "train_meld", "train_gnn", "train_fv2es"])
def test_every_flag_is_one_short_phrase_with_its_default_and_no_record(script):
    """-h: each flag one short phrase that gives its default; no scores or machines in help strings or the docstring."""
    import importlib
    import re
    module = importlib.import_module(script)
    parser = module.build_parser()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, action.option_strings
        text = action.help % {"default": action.default} if "%(default)" in action.help else action.help
        assert len(text) <= 100 and ("default" in text or "(required)" in text), (action.option_strings, text)
    record = re.compile(r"\b0\.\d{3}\b|\bAVX|\bEPYC\b|\bcores?\b|\d\s*min\b|\d(\.\d+)?x faster")
    for text in [module.__doc__, *(a.help or "" for a in parser._actions)]:
        assert not record.search(text), record.search(text).group()
