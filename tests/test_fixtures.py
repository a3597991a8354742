"""Synthetic datasets are written in the real layouts, with readable media and a planted signal."""
import ast
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from preprocess.fixtures.__main__ import KINDS
from preprocess.fixtures.ravdess import HUE_DEG, TONE_HZ, make_ravdess
from preprocess.fixtures.writers import hue_rgb
from preprocess.media import load_audio, probe, read_frames
from preprocess.tree import walk_files

ROOT = Path(__file__).resolve().parent.parent
RAVDESS_NAME = re.compile(r"Actor_(\d\d)/(0[123])-(01)-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)\.(mp4|wav)")


@pytest.fixture(scope="module")
def ravdess(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ravdess")
    return out_dir, make_ravdess(out_dir, actors=(1, 2), seed=3)


def parse(path, out_dir):
    match = RAVDESS_NAME.fullmatch(path.relative_to(out_dir).as_posix())
    assert match, path
    folder_actor, modality, channel, emotion, intensity, statement, repetition, actor, suffix = match.groups()
    assert folder_actor == actor
    return {"modality": int(modality), "emotion": int(emotion), "intensity": int(intensity),
            "statement": int(statement), "repetition": int(repetition), "actor": int(actor), "suffix": suffix}


def test_ravdess_files_carry_the_real_names(ravdess):
    out_dir, written = ravdess
    assert sorted(out_dir.rglob("*.*")) == written
    fields = [parse(path, out_dir) for path in written]
    assert {f["actor"] for f in fields} == {1, 2}
    assert {f["emotion"] for f in fields} == set(range(1, 9))
    assert {(f["modality"], f["suffix"]) for f in fields} == {(1, "mp4"), (2, "mp4"), (3, "wav")}
    assert {f["intensity"] for f in fields if f["emotion"] == 1} == {1}  # neutral: normal intensity only
    assert {f["intensity"] for f in fields if f["emotion"] != 1} == {1, 2}
    assert {(f["statement"], f["repetition"]) for f in fields} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    trials = Counter(tuple(v for k, v in f.items() if k not in ("modality", "suffix")) for f in fields)
    assert set(trials.values()) == {3}  # every trial has its AV mp4, silent twin and wav


def test_ravdess_media_streams_match_the_modality(ravdess):
    out_dir, written = ravdess
    for path in written[::7]:
        modality = parse(path, out_dir)["modality"]
        info = probe(path)
        assert info["has_video"] == (modality in (1, 2)), path
        assert info["has_audio"] == (modality in (1, 3)), path
        if modality != 2:
            assert load_audio(path).ndim == 1


def test_silent_twin_has_the_av_clip_frames_and_the_wav_its_audio(ravdess):
    out_dir, _ = ravdess
    av_clip = next(out_dir.glob("Actor_02/01-01-05-02-*-02.mp4"))  # angry, strong, actor 02
    twin = av_clip.with_name("02" + av_clip.name[2:])
    wav = av_clip.with_name("03" + av_clip.name[2:-4] + ".wav")
    _, av_frames = read_frames(av_clip)
    _, twin_frames = read_frames(twin)
    assert np.array_equal(av_frames, twin_frames)
    av_audio, wav_audio = load_audio(av_clip), load_audio(wav)
    assert av_audio.shape == wav_audio.shape
    assert float(np.corrcoef(av_audio.numpy(), wav_audio.numpy())[0, 1]) > 0.9  # same audio, through AAC


def test_ravdess_planted_signal_tone_and_hue_follow_the_emotion(ravdess):
    out_dir, _ = ravdess
    for emotion in (1, 4, 8):
        wav = next(out_dir.glob(f"Actor_01/03-01-{emotion:02d}-01-*.wav"))
        audio = load_audio(wav).numpy()
        spectrum = np.abs(np.fft.rfft(audio))
        peak_hz = np.argmax(spectrum) * 16000 / len(audio)
        assert peak_hz == pytest.approx(TONE_HZ[emotion], rel=0.08)

        clip = wav.with_name("01" + wav.name[2:-4] + ".mp4")
        _, frames = read_frames(clip, fps=1)
        centre = frames[0, 20:28, 28:36].reshape(-1, 3).mean(axis=0)  # inside the 24-px square
        expected = np.array(hue_rgb(HUE_DEG[emotion], saturation=0.5, value=0.9), float)
        assert np.abs(centre - expected).max() < 40, (emotion, centre, expected)


def test_cli_writes_a_dataset(tmp_path):
    result = subprocess.run([sys.executable, "-m", "preprocess.fixtures", "ravdess", str(tmp_path / "rv"),
                             "--seed", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 270 files" in result.stdout
    assert len(list((tmp_path / "rv").glob("Actor_06/*.mp4"))) == 30


def test_cli_rejects_an_unknown_kind_clearly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "preprocess.fixtures", "nosuchset", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid choice: 'nosuchset'" in result.stderr and "ravdess" in result.stderr


def test_cli_help_explains_each_flag():
    result = subprocess.run([sys.executable, "-m", "preprocess.fixtures", "-h"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for word in ("kind", "out_dir", "--seed", *KINDS):
        assert word in result.stdout


def test_no_parser_imports_the_fixtures_side():
    """Fixtures import parsers (for names, and to build processed layouts), never the other way: no import cycle."""
    parsers = [path for path in (ROOT / "preprocess").glob("*.py")]
    assert len(parsers) >= 10
    for path in parsers:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(name.startswith("preprocess.fixtures") for name in names), (path.name, names)
    for kind in KINDS:  # every kind has its own module holding its make_<kind>
        module = __import__(f"preprocess.fixtures.{kind}", fromlist=["_"])
        assert getattr(module, f"make_{kind}") is KINDS[kind]


def test_walk_files_follows_linked_folders_and_ends_link_loops(tmp_path):
    store, data = tmp_path / "store", tmp_path / "data"
    (store / "Actor_01").mkdir(parents=True)
    (store / "Actor_01" / "a.wav").write_bytes(b"")
    (data / "Actor_02").mkdir(parents=True)
    (data / "Actor_02" / "b.WAV").write_bytes(b"")
    (data / "Actor_02" / "notes.txt").write_bytes(b"")
    (data / "Actor_01").symlink_to(store / "Actor_01", target_is_directory=True)
    (data / "Actor_01_again").symlink_to(store / "Actor_01", target_is_directory=True)  # the same folder twice: read once
    (data / "Actor_02" / "up").symlink_to(data, target_is_directory=True)  # a loop
    (data / "broken.wav").symlink_to(tmp_path / "nowhere.wav")  # a dangling link is no file
    assert data / "Actor_01" / "a.wav" not in list(data.rglob("*.wav"))  # what the parsers used before: linked folders not entered
    assert walk_files(data, {".wav"}) == [data / "Actor_01" / "a.wav", data / "Actor_02" / "b.WAV"]
    assert walk_files(data) == [data / "Actor_01" / "a.wav", data / "Actor_02" / "b.WAV", data / "Actor_02" / "notes.txt"]
    assert walk_files(data / "Actor_01") == [data / "Actor_01" / "a.wav"]  # a linked root
