"""The bad-input catalogue (README "Bad input"): every single-file command (the --predict paths of
train_av.py, train_highlight.py and train_fv2es.py) answers a bad file with one `error: FILE: problem` line
and exit status 2, wav variants that should work do, headers that lie cost nothing, label files and
features that do not fit are skipped and listed, paths with spaces and non-ASCII letters work, and a full
disk or a read-only folder is one clear line with no partial file left behind."""
import csv
import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import common
import train_av
import train_fv2es
import train_highlight
from common import InputError, run_main, save_checkpoint
from preprocess.fixtures.writers import solid_frame, tone, write_video, write_wav
from preprocess.media import MediaError, load_audio, probe, read_frames

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- bad media files

def patch_mp4_durations(data, seconds):
    """Claim `seconds` in the movie (mvhd), track (tkhd) and media (mdhd) headers of an mp4's bytes."""
    data = bytearray(data)
    movie_timescale = None
    for atom in (b"mvhd", b"tkhd", b"mdhd"):
        at = data.find(atom)
        while at >= 0:
            body = at + 4  # version (1 byte) + flags (3)
            if data[body] != 0:
                raise ValueError("fixture writes version-0 headers")
            if atom == b"tkhd":  # creation, modification, track id, reserved, duration (in the movie's timescale)
                data[body + 20:body + 24] = struct.pack(">I", movie_timescale * seconds)
            else:  # creation, modification, timescale, duration
                timescale = struct.unpack(">I", data[body + 12:body + 16])[0]
                movie_timescale = movie_timescale or timescale
                data[body + 16:body + 20] = struct.pack(">I", min(timescale * seconds, 2**32 - 1))
            at = data.find(atom, at + 4)
    return bytes(data)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """name -> path of the catalogue's media files (all tiny)."""
    folder = tmp_path_factory.mktemp("media")
    frames = [solid_frame(48, 64, (90, 120, 150))] * 10
    files = {
        "av": write_video(folder / "av.mp4", frames, fps=10, audio=tone(440, 1.0, 16000)),
        "silent": write_video(folder / "silent.mp4", frames, fps=10),
        "one_frame": write_video(folder / "one_frame.mp4", frames[:1], fps=10, audio=tone(440, 0.1, 16000)),
        "voice": write_wav(folder / "voice.wav", tone(440, 1.0, 16000), 16000),
    }
    streamable = write_video(folder / "streamable.mp4", frames, fps=10, audio=tone(440, 1.0, 16000), faststart=True)
    files["truncated"] = folder / "truncated.mp4"
    files["truncated"].write_bytes(streamable.read_bytes()[:streamable.stat().st_size * 2 // 3])
    files["zero_mp4"], files["zero_wav"] = folder / "zero.mp4", folder / "zero.wav"
    files["zero_mp4"].write_bytes(b"")
    files["zero_wav"].write_bytes(b"")
    files["text_mp4"], files["text_wav"] = folder / "notes.mp4", folder / "notes.wav"
    files["text_mp4"].write_text("not a video\n")
    files["text_wav"].write_text("RIFF but not really\n")
    files["ten_hours"] = folder / "ten_hours.mp4"
    files["ten_hours"].write_bytes(patch_mp4_durations(files["av"].read_bytes(), 10 * 3600))
    huge = bytearray(files["voice"].read_bytes())
    data_at = huge.find(b"data")
    huge[4:8] = struct.pack("<I", 0xFFFFFFF0)  # RIFF size
    huge[data_at + 4:data_at + 8] = struct.pack("<I", 0xFFFFFF00)  # data size: 37 hours of 16-bit 16 kHz
    files["huge_wav"] = folder / "huge_header.wav"
    files["huge_wav"].write_bytes(bytes(huge))
    return files


def test_a_ten_hour_header_costs_nothing(media):
    """mp4 headers (mvhd/tkhd/mdhd) and a wav data size that claim 10+ hours: the readers go by the streams,
    so a 1-s file reads as 1 s, fast and in little memory."""
    assert patch_mp4_durations(media["av"].read_bytes(), 36000) != media["av"].read_bytes()
    for name in ("ten_hours", "huge_wav"):
        started = time.perf_counter()
        tracemalloc.start()
        info = probe(media[name])
        audio = load_audio(media[name])
        frames = read_frames(media[name], fps=1)[1] if name == "ten_hours" else None
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert info["duration_s"] == pytest.approx(1.0, abs=0.1), info
        assert audio.shape == (16000,) and (frames is None or len(frames) == 1)
        assert peak < 20_000_000 and time.perf_counter() - started < 10


@pytest.mark.parametrize("rate", [1, 44101, 999983, 2**31 - 1])
def test_a_wav_header_with_an_impossible_sample_rate_is_one_line(media, tmp_path, rate):
    """A damaged rate would make the resampler allocate gigabytes (or the output hours long): refused at once."""
    data = bytearray(media["voice"].read_bytes())
    data[data.find(b"fmt ") + 12:data.find(b"fmt ") + 16] = struct.pack("<I", rate)
    path = tmp_path / "rate.wav"
    path.write_bytes(bytes(data))
    started = time.perf_counter()
    with pytest.raises(MediaError, match=f"rate.wav: sample rate {rate} Hz") as raised:
        load_audio(path)
    assert "\n" not in str(raised.value) and time.perf_counter() - started < 1


def test_a_one_frame_video_is_read_and_predicted(media, av_checkpoints, highlight_checkpoint, tmp_path):
    timestamps, frames = read_frames(media["one_frame"], fps=5)
    assert timestamps == [0.0] and frames.shape == (1, 48, 64, 3)
    [prediction] = train_av.main(["--predict", str(media["one_frame"]), "--ckpt", str(av_checkpoints["v"])])
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    result = train_highlight.main(["--predict", str(media["one_frame"]), "--ckpt", str(highlight_checkpoint), "--out", str(tmp_path / "pred")])
    assert len(result["scores"]) == 1


WAV_VARIANTS = {"8bit": (16000, 1, "PCM_U8"), "24bit": (16000, 1, "PCM_24"), "float": (16000, 1, "FLOAT"),
                "stereo": (16000, 2, "PCM_16"), "48k": (48000, 1, "PCM_16"), "8k": (8000, 1, "PCM_16")}


@pytest.mark.parametrize("variant", sorted(WAV_VARIANTS))
def test_wav_variants_are_predicted_like_16k_mono(tmp_path, av_checkpoints, variant):
    """8-bit/24-bit/float/stereo/48 kHz/8 kHz: the predict path gives what the 16-bit 16 kHz mono file gives
    (tests/test_media.py checks the loader itself: mono mix, 16 kHz, amplitude)."""
    rate, channels, subtype = WAV_VARIANTS[variant]
    wave = tone(440, 1.0, rate, amplitude=0.4)
    reference = write_wav(tmp_path / "reference.wav", tone(440, 1.0, 16000, amplitude=0.4), 16000)
    variant_path = write_wav(tmp_path / f"{variant}.wav", np.stack([wave, wave], 1) if channels == 2 else wave, rate, subtype=subtype)
    predictions = train_av.main(["--predict", str(reference), str(variant_path), "--ckpt", str(av_checkpoints["a"])])
    expected, got = predictions[0]["probabilities"], predictions[1]["probabilities"]
    assert max(abs(expected[name] - got[name]) for name in expected) < 0.05, (expected, got)


# --------------------------------------------------------------------------- single-file commands

@pytest.fixture(scope="module")
def av_checkpoints(tmp_path_factory):
    """Untrained train_av.py checkpoints (-mod a and -mod v) as its training writes them."""
    folder = tmp_path_factory.mktemp("av_ckpt")
    paths = {}
    for modalities in ("a", "v"):
        args = vars(train_av.build_parser().parse_args(["--data", "x", "-mod", modalities, "--frame-size", "32", "--video-frames", "4"]))
        torch.manual_seed(0)
        model = train_av.build_model(args, 8)
        paths[modalities] = save_checkpoint(folder / f"{modalities}.pt", {"model": model.state_dict(), "args": args,
                                                                          "class_names": list(train_av.EMOTIONS)})
    return paths


@pytest.fixture(scope="module")
def highlight_checkpoint(tmp_path_factory):
    """An untrained train_highlight.py -mod av checkpoint (small CNN, log-mel statistics audio)."""
    folder = tmp_path_factory.mktemp("highlight_ckpt")
    args = train_highlight.build_parser().parse_args(["--data", "x", "-mod", "av", "--image-encoder", "cnn", "--hidden", "8",
                                                      "--frame-size", "32", "--cache", str(folder / "cache")])
    settings = {**vars(args), "audio_dim": 128, "probes_sha1": None}
    torch.manual_seed(0)
    model = train_highlight.build_model(settings)
    settings = {k: v for k, v in settings.items() if k not in ("data", "out", "compare", "predict", "ckpt")}
    stats = {"audio_mean": torch.zeros(128), "audio_std": torch.ones(128)}
    return save_checkpoint(folder / "model.pt", {"model": model.state_dict(), "epoch": 0, "settings": settings, "stats": stats,
                                                 "probes": None, "threshold": 0.5})


@pytest.fixture(scope="module")
def fv2es_checkpoint(tmp_path_factory):
    """An untrained train_fv2es.py -mod av checkpoint (tiny nested audio transformer, RepVGG faces)."""
    folder = tmp_path_factory.mktemp("fv2es_ckpt")
    args = train_fv2es.build_parser().parse_args(["-lr", "1e-3", "-mod", "av", "--audio-size", "tiny", "--trans-dim", "16",
                                                  "--trans-nlayers", "1", "--trans-nheads", "2", "--mtcnn", str(folder / "no-mtcnn")])
    torch.manual_seed(0)
    model = train_fv2es.build_model(args)
    return save_checkpoint(folder / "model.pt", {"model": model.state_dict(), "args": vars(args), "epoch": 0,
                                                 "thresholds": [0.5] * 6, "class_names": list(train_fv2es.CLASS_NAMES["iemocap"])})


def one_line_error(capsys, main, argv):
    """Run `main(argv)` as the script does (common.run_main): the exit status and the stderr lines."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(argv))
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


BAD_FILES = {  # catalogue row -> (media file, words the error line must hold)
    "zero-byte .mp4": ("zero_mp4", "empty file"), "zero-byte .wav": ("zero_wav", "empty file"),
    "truncated .mp4": ("truncated", "truncated"), "text named .mp4": ("text_mp4", "not a readable"),
    "text named .wav": ("text_wav", "not a readable"),
}
PREDICT_COMMANDS = ["av -mod a", "av -mod v", "highlight", "fv2es"]


def predict_argv(command, path, checkpoints, out):
    if command.startswith("av"):
        return train_av.main, ["--predict", str(path), "--ckpt", str(checkpoints["av"][command[-1]])]
    if command == "highlight":
        return train_highlight.main, ["--predict", str(path), "--ckpt", str(checkpoints["highlight"]), "--out", str(out)]
    return train_fv2es.main, ["--predict", str(path), "--ckpt", str(checkpoints["fv2es"]), "--out", str(out), "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoints(av_checkpoints, highlight_checkpoint, fv2es_checkpoint):
    return {"av": av_checkpoints, "highlight": highlight_checkpoint, "fv2es": fv2es_checkpoint}


@pytest.mark.parametrize("command", PREDICT_COMMANDS)
@pytest.mark.parametrize("row", sorted(BAD_FILES))
def test_predict_answers_a_bad_file_with_one_line(media, checkpoints, tmp_path, capsys, command, row):
    name, problem = BAD_FILES[row]
    main, argv = predict_argv(command, media[name], checkpoints, tmp_path / "out")
    code, lines = one_line_error(capsys, main, argv)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {media[name]}: ") and problem in lines[0], lines
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


MISSING_STREAM = [  # (command, media file, words): the stream a model needs is not in the file
    ("av -mod a", "silent", "no audio stream"), ("av -mod v", "voice", "no video stream"),
    ("highlight", "silent", "no audio stream"), ("highlight", "voice", "no video stream"),
    ("fv2es", "silent", "no audio stream"), ("fv2es", "voice", "no video stream"),
]


@pytest.mark.parametrize("command, name, problem", MISSING_STREAM)
def test_predict_names_the_missing_stream(media, checkpoints, tmp_path, capsys, command, name, problem):
    main, argv = predict_argv(command, media[name], checkpoints, tmp_path / "out")
    code, lines = one_line_error(capsys, main, argv)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {media[name]}") and problem in lines[0], lines


def test_predict_error_is_one_line_without_traceback_in_a_real_process(media, checkpoints, tmp_path, monkeypatch):
    _, argv = predict_argv("highlight", media["truncated"], checkpoints, tmp_path / "out")
    result = subprocess.run([sys.executable, "train_highlight.py", *argv], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {media['truncated']}: truncated"), result.stderr[-2000:]
    monkeypatch.setattr(sys, "argv", ["train_av.py", "--debug"])  # --debug: the traceback instead of the line
    with pytest.raises(MediaError, match="empty file"):
        run_main(lambda: train_av.main(predict_argv("av -mod a", media["zero_wav"], checkpoints, tmp_path)[1]))


# ------------------------------------------------------------------------------- paths and folders

def test_spaces_and_non_ascii_paths_work_end_to_end(media, checkpoints, tmp_path):
    folder = tmp_path / "데이터 폴더 é"
    folder.mkdir()
    clip = folder / "유튜브 clip #1 (ça).mp4"
    shutil.copy(media["av"], clip)
    assert probe(clip)["has_audio"] and len(read_frames(clip, fps=2)[0]) == 2
    [prediction] = train_av.main(["--predict", str(clip), "--ckpt", str(checkpoints["av"]["a"])])
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    out = folder / "출력 out"
    result = train_highlight.main(["--predict", str(clip), "--ckpt", str(checkpoints["highlight"]), "--out", str(out), "--fraction", "1.0"])
    assert len(result["scores"]) == 1 and (out / "report.html").is_file() and (out / "segments.json").is_file()


def test_read_only_output_folder_is_one_line(media, checkpoints, tmp_path, capsys, monkeypatch):
    """A folder we may not write to: chmod 555 (as a normal user) or, for root (who may write anyway), the
    kernel's EACCES simulated at the point every write goes through (common.atomic_write's mkstemp)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:
        real_mkstemp = common.tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if Path(dir).resolve().is_relative_to(locked.resolve()):
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_mkstemp(*args, dir=dir, **kwargs)
        monkeypatch.setattr(common.tempfile, "mkstemp", refuse)
    try:
        for main, argv in (predict_argv("highlight", media["av"], checkpoints, locked / "pred"),
                           predict_argv("fv2es", media["av"], checkpoints, locked / "pred")):
            code, lines = one_line_error(capsys, main, argv)
            assert code == 2 and len(lines) == 1 and str(locked) in lines[0], lines
            assert "cannot write here" in lines[0] or "not writable" in lines[0], lines
        code, lines = one_line_error(capsys, train_av.main, ["--data", str(tmp_path), "--out", str(locked / "run"), "-mod", "a"])
        assert code == 2 and len(lines) == 1 and str(locked) in lines[0], lines
    finally:
        locked.chmod(0o755)


def test_disk_full_during_a_cache_write_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    """np.save writes half of the array, then the disk is full: one clear line, no cache entry, no temp file;
    the next run (disk freed) builds the entry."""
    from preprocess import cache
    source = write_wav(tmp_path / "clip.wav", tone(440, 0.5, 16000), 16000)
    cache_dir = tmp_path / "cache"
    real_save = np.save

    def save_then_fill_the_disk(file, array, **kwargs):
        file.write(b"\x93NUMPY" + bytes(1000))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "save", save_then_fill_the_disk)
    with pytest.raises(InputError) as raised:
        cache.cached_array(cache_dir, source, {"k": 1}, lambda: np.ones(4000))
    message = str(raised.value)
    assert "No space left on device" in message and str(cache_dir) in message and "\n" not in message
    assert list(cache_dir.iterdir()) == []
    monkeypatch.setattr(np, "save", real_save)
    assert np.array_equal(cache.cached_array(cache_dir, source, {"k": 1}, lambda: np.ones(4000)), np.ones(4000))
    assert len(list(cache_dir.iterdir())) == 1


def test_disk_full_during_checkpoint_and_report_writes(tmp_path, monkeypatch):
    """The same for torch.save (checkpoints) and JSON reports: the old file stays whole, no temp file is left."""
    path = save_checkpoint(tmp_path / "model.pt", {"w": torch.ones(3)})
    common.write_json(tmp_path / "metrics.json", {"accuracy": 0.5})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(common.os, "fsync", full)
    with pytest.raises(InputError, match="model.pt: write failed \\(No space left on device\\)"):
        save_checkpoint(path, {"w": torch.zeros(1000)})
    with pytest.raises(InputError, match="metrics.json: write failed"):
        common.write_json(tmp_path / "metrics.json", {"accuracy": 0.9})
    monkeypatch.setattr(common.os, "fsync", real_fsync)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model.pt"]
    assert torch.equal(common.load_checkpoint(path)["w"], torch.ones(3))
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"accuracy": 0.5}


# ---------------------------------------------------------------------------------- dataset commands

@pytest.fixture(scope="module")
def manifest_corpus(tmp_path_factory):
    """A train_av.py manifest over tiny wavs: 4 speakers x 2 classes, a class only the test speaker has, a
    non-ASCII / spaced path, stereo 48 kHz, and bad rows: zero-byte, text, NaN samples, missing, empty label."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    rows = []
    for speaker in range(1, 5):
        for take in range(3):
            for label, hz in (("low", 300), ("high", 1200)):
                path = write_wav(folder / f"s{speaker}" / f"{label}_{take}.wav", tone(hz, 0.5, 16000, noise=0.02, rng=rng), 16000)
                rows.append([str(path.relative_to(folder)), label, f"s{speaker}"])
    rare = write_wav(folder / "s4" / "rare.wav", tone(3000, 0.5, 16000), 16000)
    odd = write_wav(folder / "말 소리 é" / "high take 9.wav", np.stack([tone(1200, 0.5, 48000)] * 2, 1), 48000)
    nan_wav = write_wav(folder / "s1" / "nan.wav", np.where(np.arange(8000) == 4000, np.nan, tone(300, 0.5, 16000)), 16000, subtype="FLOAT")
    (folder / "s1" / "zero.wav").write_bytes(b"")
    (folder / "s2" / "text.wav").write_text("hello\n")
    rows += [[str(rare.relative_to(folder)), "rare", "s4"], [str(odd.relative_to(folder)), "high", "s2"],
             [str(nan_wav.relative_to(folder)), "low", "s1"], ["s1/zero.wav", "low", "s1"], ["s2/text.wav", "high", "s2"],
             ["s3/missing.wav", "low", "s3"], ["s3/low_0.wav", "", "s3"]]
    manifest = folder / "clips.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["path", "label", "group"], *rows])
    return manifest


def test_dataset_skips_bad_files_lists_them_and_trains_on_the_rest(manifest_corpus, tmp_path):
    """Zero-byte, text and NaN-sample wavs, a missing file and an empty label are listed in failures.csv; the
    spaced non-ASCII stereo 48 kHz file is used; a class only the test speaker has scores 0, not a crash."""
    out = tmp_path / "run"
    metrics = train_av.main(["--manifest", str(manifest_corpus), "--out", str(out), "--cache", str(tmp_path / "cache"), "-mod", "a",
                             "--epochs", "2", "--batch-size", "8", "--test-groups", "s4", "--val-groups", "s3", "--device", "cpu"])
    with open(out / "failures.csv", newline="", encoding="utf-8") as file:
        problems = {Path(row["item"]).name: row["problem"] for row in csv.DictReader(file)}
    assert "empty file" in problems["zero.wav"] and "not a readable" in problems["text.wav"]
    assert "NaN or infinite samples" in problems["nan.wav"] and "not found" in problems["missing.wav"]
    assert any("empty path, label or group" in problem for problem in problems.values())
    split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    assert any("말 소리 é" in key for key in split["train"]["trials"])
    assert metrics["test"]["per_class_f1"]["rare"] == 0.0 and metrics["test"]["n"] == 7
    assert all(np.isfinite(metrics[part]["macro_f1"]) for part in ("val", "test"))


def test_dataset_fails_only_when_nothing_usable_remains(manifest_corpus, tmp_path, capsys):
    bad_only = tmp_path / "bad.csv"
    bad_only.write_text("path,label,group\n" + "".join(f"{manifest_corpus.parent / name},low,s1\n" for name in ("s1/zero.wav", "s2/text.wav")))
    code, lines = one_line_error(capsys, train_av.main, ["--manifest", str(bad_only), "--out", str(tmp_path / "run"), "-mod", "a",
                                                         "--cache", str(tmp_path / "cache")])
    assert code == 2 and lines[-1] == f"error: {bad_only}: no usable trials for -mod a", lines
    with open(tmp_path / "run" / "failures.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == 2
    code, lines = one_line_error(capsys, train_av.main, ["--manifest", str(manifest_corpus), "--out", str(tmp_path / "run2"), "-mod", "a",
                                                         "--cache", str(tmp_path / "cache"), "--test-groups", "s4", "--val-groups", "s9"])
    assert code == 2 and lines[-1].startswith(f"error: {manifest_corpus}: the val split is empty"), lines  # empty split
    missing_column = tmp_path / "columns.csv"
    missing_column.write_text("path,group\nx.wav,s1\n")
    code, lines = one_line_error(capsys, train_av.main, ["--manifest", str(missing_column), "-mod", "a", "--out", str(tmp_path / "run3")])
    assert code == 2 and lines == [f"error: {missing_column}: missing column(s) label (need path,label,group)"]


def test_corrupt_label_json_is_listed_and_the_video_keeps_its_good_annotators(tmp_path):
    from preprocess.aihub import scan_aihub
    from preprocess.fixtures.aihub import make_aihub
    make_aihub(tmp_path, categories=("반려동물및동물",), videos_per_category=1, annotators=1, duration_s=40, fps=1, height=16, width=16, seed=0)
    [good] = list(tmp_path.rglob("*_001.json"))
    payload = json.loads(good.read_text(encoding="utf-8"))
    bad = {"004": good.read_text(encoding="utf-8")[:40],                                          # cut short
           "005": json.dumps({**payload, "timelines": [{"id": 1, "end": 3}]}),                      # a timeline without start
           "006": json.dumps({**payload, "metadata": {**payload["metadata"], "length": 1e12}}),   # 10-hour-header's cousin
           "007": json.dumps({**payload, "metadata": {**payload["metadata"], "length": "nan"}}),
           "008": json.dumps({**payload, "timelines": 5}), "009": "[]"}
    for annotator, text in bad.items():
        good.with_name(good.name.replace("_001", f"_{annotator}")).write_text(text, encoding="utf-8")
    videos, problems = scan_aihub(tmp_path)
    reasons = {Path(path).stem.rsplit("_", 1)[1]: reason for path, reason in problems}
    assert set(reasons) == set(bad) and all("not an AI-Hub label file" in reasons[a] for a in ("004", "005", "008", "009"))
    assert "not a video length" in reasons["006"] and "not a video length" in reasons["007"]
    assert len(videos) == 1 and len(videos[0].annotations) == 1 and len(videos[0].labels()) == 40


def test_meld_csv_rows_that_do_not_parse_are_skipped_and_listed(tmp_path, capsys):
    import train_meld
    from preprocess.meld import read_split
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n"
    (tmp_path / "train_sent_emo.csv").write_text(header + "1,hi,A,joy,positive,0,0\n2,meh,B,bored,neutral,0,1\n3,x,A,anger,negative,zero,2\n")
    (tmp_path / "dev_sent_emo.csv").write_text(header + "1,ok,A,fear,negative,0,0\n")
    problems = []
    splits = train_meld.load_splits(tmp_path, problems)
    assert [u.key for u in splits["train"]] == ["train/dia0_utt0"] and "test" not in splits
    assert problems == [("train/train_sent_emo.csv:3", "unknown emotion 'bored' (expected one of "
                                                        "neutral, joy, surprise, anger, sadness, disgust, fear)"),
                        ("train/train_sent_emo.csv:4", "Dialogue_ID/Utterance_ID must be integers")]
    with pytest.raises(InputError, match="train_sent_emo.csv:3: unknown emotion"):
        read_split(tmp_path, "train")  # without a problems list a bad row is an error
    (tmp_path / "dev_sent_emo.csv").write_text(header)  # an empty split
    with pytest.raises(InputError, match="dev_sent_emo.csv: no rows"):
        train_meld.load_splits(tmp_path, [])
    (tmp_path / "dev_sent_emo.csv").write_text("Utterance,Speaker\nhi,A\n")  # missing columns
    code, lines = one_line_error(capsys, train_meld.main, ["--data", str(tmp_path), "-mod", "a", "--out", str(tmp_path / "run")])
    assert code == 2 and lines == [f"error: {tmp_path / 'dev_sent_emo.csv'}: missing column(s) Emotion, Dialogue_ID, Utterance_ID "
                                   "(expected the MELD header)"], lines


def test_processed_fv2es_meta_that_does_not_parse_is_one_line(tmp_path, capsys):
    meta_dir = tmp_path / "IEMOCAP_RAW_PROCESSED"
    meta_dir.mkdir()
    cases = {"{broken": "not readable (JSONDecodeError", "[1, 2]": "expected {utterance id",
             '{"Ses01F_impro01_F000": {"text": "no label"}}': "no usable utterance in meta",
             '{"Ses01F_impro01_F000": {"label": "bored"}}': "label 'bored' is none of"}
    for text, problem in cases.items():
        (meta_dir / "meta.json").write_text(text)
        code, lines = one_line_error(capsys, train_fv2es.main, ["-lr", "1e-3", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                                                "-mod", "a", "--device", "cpu"])
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {meta_dir}") and problem in lines[0], (text, lines)


def test_fv2es_meta_entries_that_do_not_parse_are_skipped_and_listed(tmp_path):
    from preprocess.fv2es_reader import read_processed
    meta_dir, split_dir = tmp_path / "IEMOCAP_RAW_PROCESSED", tmp_path / "IEMOCAP_SPLIT"
    meta_dir.mkdir(), split_dir.mkdir()
    good = {f"Ses01F_impro01_F00{i}": {"label": "ang", "text": "hi"} for i in range(3)}
    bad = {"Ses01F_impro01_M000": {"text": "no label"}, "Ses01F_impro01_M001": {"label": "bored"},
           "Ses01F_impro01_M002": {"label": 17}, "Ses01F_impro01_M003": {"label": -1},
           "Ses01F_impro01_M004": {"label": [0, 0, float("nan"), 0, 0, 1]}}
    (meta_dir / "meta.json").write_text(json.dumps({**good, **bad}))
    for split, ids in {"train": [*good, *bad], "valid": ["Ses01F_impro01_F000", "Ses09F_nowhere_F000"], "test": ["Ses01F_impro01_F001"]}.items():
        (split_dir / f"{split}_split.txt").write_text("\n".join(ids) + "\n")
    items, splits, failures = read_processed(tmp_path, "iemocap")
    assert sorted(items) == sorted(good) and splits["train"] == list(good) and splits["valid"] == ["Ses01F_impro01_F000"]
    problems = dict(failures)
    assert sorted(problems) == sorted([*bad, "Ses09F_nowhere_F000"])
    for key, problem in [("Ses01F_impro01_M001", "none of"), ("Ses01F_impro01_M002", "class index"), ("Ses01F_impro01_M003", "class index"),
                         ("Ses01F_impro01_M004", "NaN or inf"), ("Ses09F_nowhere_F000", "no usable entry")]:
        assert problem in problems[key], (key, problems[key])


def test_nan_and_inf_sensor_values_are_malformed_lines(tmp_path):
    from preprocess.kemdy20 import read_e4
    path = tmp_path / "eda.csv"
    path.write_text("1604631600.000000,2020-1106-1200-00-000\n4.000000,hz\n0.5,2020-1106-1200-00-000\nnan,2020-1106-1200-00-250\ninf,2020-1106-1200-00-500\n"
                    "0.7,2020-1106-1200-00-750,Sess01_script01_User001F_001\n")
    values, times, segments, bad = read_e4(path)
    assert values.tolist() == [0.5, 0.7] and bad == 2 and segments == ["", "sess01_script01_user001f_001"]


# ------------------------------------------------------------------------------------------ caches

def test_array_cache_reuses_valid_entries_and_rebuilds_corrupt_ones(tmp_path):
    from preprocess.cache import cache_path, ensure_cached
    source = write_wav(tmp_path / "clip.wav", tone(440, 0.2, 16000), 16000)
    calls = []

    def compute():
        calls.append(1)
        return np.arange(1000, dtype=np.float32)
    path = ensure_cached(tmp_path / "cache", source, {"k": 1}, compute)
    assert ensure_cached(tmp_path / "cache", source, {"k": 1}, compute) == path and len(calls) == 1  # reused
    for damage in (lambda data: data[:len(data) // 2], lambda data: b"garbage"):
        path.write_bytes(damage(path.read_bytes()))
        ensure_cached(tmp_path / "cache", source, {"k": 1}, compute)
        assert np.array_equal(np.load(path, allow_pickle=False), np.arange(1000, dtype=np.float32))
    assert len(calls) == 3 and cache_path(tmp_path / "cache", source, {"k": 2}) != path
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickle where an array belongs: rebuilt, never loaded
    assert np.load(ensure_cached(tmp_path / "cache", source, {"k": 1}, compute), allow_pickle=False).dtype == np.float32


def test_gnn_stage_caches_rebuild_when_corrupt(tmp_path, capsys):
    import train_gnn
    path = tmp_path / "features.npz"
    arrays = {"features": np.ones((4, 3, 8), np.float32)}
    train_gnn.save_cached(path, {"stage": 1}, arrays)
    assert np.array_equal(train_gnn.load_cached(path, {"stage": 1})["features"], arrays["features"])  # reused
    assert train_gnn.load_cached(path, {"stage": 2}) is None  # other settings: rebuilt
    valid = path.read_bytes()
    for damaged in (valid[:len(valid) // 2], b"PK\x03\x04" + bytes(100), valid[:60] + bytes(len(valid) - 60)):
        path.write_bytes(damaged)
        assert train_gnn.load_cached(path, {"stage": 1}) is None
    assert "unreadable cache, rebuilding it" in capsys.readouterr().out
    (tmp_path / "nodes.npz").write_bytes(valid[:100])
    with pytest.raises(InputError, match="nodes.npz: unreadable .*give --data"):
        train_gnn.prepare_nodes(train_gnn.build_parser().parse_args(["--out", str(tmp_path)]), tmp_path)


def test_fv2es_corrupt_face_cache_is_recropped_and_corrupt_features_are_one_line(tmp_path):
    from PIL import Image
    from preprocess.fv2es_reader import Item
    folder = tmp_path / "Ses01F_impro01" / "Ses01F_impro01_F000"
    folder.mkdir(parents=True)
    for index in range(2):
        Image.fromarray(solid_frame(64, 64, (200, 100, 50))).save(folder / f"image_L_{index}.jpg")
    np.save(folder / "faces_L.npy", np.zeros((2, 48, 48, 3), np.uint8))
    (folder / "faces_L.npy").write_bytes((folder / "faces_L.npy").read_bytes()[:200])  # cut short
    args = train_fv2es.build_parser().parse_args(["-lr", "1", "-mod", "v", "--cache", str(tmp_path / "cache"), "--mtcnn", str(tmp_path / "none"),
                                                  "--data", str(tmp_path)])
    item = Item("Ses01F_impro01_F000", folder, "", np.eye(6, dtype=np.float32)[0], "L", "Ses01F_impro01", 1)
    dataset = train_fv2es.Utterances({item.id: item}, [item.id], args)
    faces = dataset.faces(item)
    assert faces.shape == (2, 48, 48, 3) and faces.mean() > 50  # re-cropped from the jpgs (the cut file held zeros)
    args.model, args.modalities = "lf_rnn", "a"
    hcf = Path(args.data) / train_fv2es.LAYOUT[args.dataset][2] / f"{item.id}.npz"
    hcf.parent.mkdir(parents=True)
    hcf.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match="unreadable hand-crafted features"):
        train_fv2es.Utterances({item.id: item}, [item.id], args)[0]
    np.savez(hcf, t=np.zeros((3, 300)), a=np.full((3, 144), np.nan), v=np.zeros((3, 35)))  # NaN features
    with pytest.raises(InputError, match="a features hold NaN or inf"):
        train_fv2es.Utterances({item.id: item}, [item.id], args)[0]


# --------------------------------------------------------------------------------- offline and safe

def test_checkpoints_and_caches_never_unpickle(tmp_path):
    """Every torch.load in the project passes weights_only=True, every np.load allow_pickle=False, and pickle.load
    appears once: for the documented FV2ES meta.pkl. A checkpoint holding a pickled object is refused."""
    import re
    sources = [p for p in ROOT.glob("*.py")] + [p for folder in ("preprocess", "models", "bench") for p in (ROOT / folder).rglob("*.py")]
    unsafe, checked = [], 0
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for call in re.finditer(r"\b(torch\.load|np\.load|numpy\.load|pickle\.loads?)\((.*)", text):
            name, rest = call.group(1), call.group(2)
            line, checked = text.count("\n", 0, call.start()) + 1, checked + 1
            if name == "torch.load" and "weights_only=True" not in rest:
                unsafe.append(f"{path.name}:{line}")
            elif name.endswith(".load") and "np" in name and "allow_pickle=False" not in rest:
                unsafe.append(f"{path.name}:{line}")
            elif name.startswith("pickle") and not (path.name == "fv2es_reader.py" and "meta.pkl" in text[max(0, call.start() - 600):call.start()]):
                unsafe.append(f"{path.name}:{line}")
    assert unsafe == [] and checked >= 10, (unsafe, checked)
    developers = (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
    assert "The only pickles this project reads are the ones the datasets themselves ship (FV2ES `meta.pkl`)" in developers

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned",))
    torch.save({"model": {}, "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="evil.pt: not a readable checkpoint"):
        common.load_checkpoint(tmp_path / "evil.pt")


def test_highlight_video_whose_labels_claim_another_length_is_skipped(tmp_path):
    """A label file that says 400 s for a 40-s video would pad 360 s of made-up features: the video is listed
    in failures.csv and the run goes on with the others."""
    from preprocess.fixtures.aihub import make_aihub
    data = tmp_path / "aihub"
    make_aihub(data, categories=("반려동물및동물", "스포츠"), videos_per_category=3, annotators=1, duration_s=40, fps=1, height=16, width=16, seed=0)
    label = sorted(data.rglob("*.json"))[0]
    payload = json.loads(label.read_text(encoding="utf-8"))
    payload["metadata"]["length"] = 400
    label.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "run"
    metrics = train_highlight.main(["--data", str(data), "-mod", "a", "--hidden", "8", "--epochs", "1", "--cache", str(tmp_path / "cache"),
                                    "--out", str(out), "--device", "cpu"])
    with open(out / "failures.csv", newline="", encoding="utf-8") as file:
        problems = {Path(row["item"]).stem: row["problem"] for row in csv.DictReader(file)}
    stem = label.stem.rsplit("_", 1)[0]
    assert "s of media but its label files say 400 s" in problems[stem], problems
    split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    assert stem not in {v["stem"] for part in split.values() for v in part} and metrics["test"]["n"] == 80


def test_compare_with_a_cut_or_foreign_metrics_file_is_one_line(tmp_path, capsys):
    cases = {"cut": ('{"modalities": "a", "test": {"n"', "not a train_highlight.py metrics.json (JSONDecodeError"),
             "foreign": ('{"test": {}, "modalities": "tav"}', "not a train_highlight.py metrics.json (KeyError"),
             "list": ("[1]", "this run has no test split")}
    for name, (text, problem) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(text)
        code, lines = one_line_error(capsys, train_highlight.main, ["--compare", str(tmp_path / name)])
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / name / 'metrics.json'}: {problem}"), lines
