"""train_highlight.py on a small synthetic AI-Hub tree: layout and labels, probes, the three -mod models
(multimodal must beat audio-only, video-only and all-positive), predict outputs on mp4/mkv/webm,
segments, the ViT path from a local folder, one-line errors, and report.html drawn by headless Chromium."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import train_highlight
from common import InputError
from preprocess.aihub import chunk_bounds, scan_aihub
from preprocess.fixtures.aihub import make_aihub
from preprocess.fixtures.ravdess import make_ravdess
from preprocess.fixtures.writers import solid_frame, write_video
from preprocess.media import iter_frames, load_audio, probe
from preprocess.report import find_segments, write_reel

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("스포츠", "음식", "여행", "자동차")
FAST = ["--image-encoder", "cnn", "--epochs", "25", "--batch-size", "4"]


@pytest.fixture(scope="module")
def aihub(tmp_path_factory):
    root = tmp_path_factory.mktemp("데이터 폴더")  # a non-ASCII path with a space
    make_aihub(root, categories=CATEGORIES, videos_per_category=4, annotators=3, seed=1)
    return root


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ravdess")
    make_ravdess(root / "data", actors=(1, 2, 3), seed=0)
    train_highlight.main(["--train-probes", "--probe-data", str(root / "data"), "--probe-val-actors", "1",
                          "--probe-epochs", "80", "--out", str(root / "probes")])
    return root / "probes" / "probes.pt"


@pytest.fixture(scope="module")
def runs(aihub, probes, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    metrics = {modalities: train_highlight.main(["--data", str(aihub), "--probes", str(probes), "-mod", modalities,
                                                 "--cache", str(root / "cache"), "--out", str(root / modalities), *FAST])
               for modalities in ("av", "a", "v")}
    return root, metrics


def test_layout_labels_and_sanity_rules(tmp_path):
    make_aihub(tmp_path, categories=("반려동물및동물",), videos_per_category=2, annotators=3, seed=0)
    videos, problems = scan_aihub(tmp_path)
    assert problems == [] and [v.stem for v in videos] == ["유튜브_반려동물및동물_0001", "유튜브_반려동물및동물_0002"]
    video = videos[0]
    assert video.category == "반려동물및동물" and video.category_en == "PetsAndAnimals" and len(video.annotations) == 3
    union, mean = video.labels("or"), video.labels("mean")
    assert len(union) == 40 and set(np.unique(union)) == {0.0, 1.0} and 0.05 <= union.mean() <= 0.35
    assert np.array_equal(union > 0, mean > 0) and mean.max() <= 1.0
    one_annotator = np.zeros(40)
    for start, end in video.annotations[0]:
        one_annotator[start:end + 1] = 1  # end is inclusive
    assert (union >= one_annotator).all()
    # macOS-style NFD names still pair up; a span reaching the end is clipped and kept, one outside the video or
    # backwards is dropped, both reported; orphans are reported
    label = next(tmp_path.rglob("*_0002_001.json"))
    payload = json.loads(label.read_text(encoding="utf-8"))
    payload["timelines"] += [{"id": 9, "start": 37, "end": 40, "attributes": {}},  # end == length: clipped to 39
                             {"id": 10, "start": 40, "end": 41, "attributes": {}}, {"id": 11, "start": 5, "end": 4}]
    label.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    nfd_video = label.parent / unicodedata.normalize("NFD", "유튜브_반려동물및동물_0002.mp4")
    (label.parent / "유튜브_반려동물및동물_0002.mp4").rename(nfd_video)
    (label.parent / "유튜브_반려동물및동물_0009_001.json").write_text("{}", encoding="utf-8")
    write_video(label.parent / "유튜브_반려동물및동물_0010.mp4", [solid_frame(16, 16, (0, 0, 0))] * 4, fps=4)
    videos, problems = scan_aihub(tmp_path)
    reasons = {Path(path).name: reason for path, reason in problems}
    assert len(videos) == 2 and videos[1].labels()[37:].tolist() == [1, 1, 1] and len(videos[1].labels()) == 40
    assert (37, 39) in videos[1].annotations[0]
    problems_of_label = [reason for path, reason in problems if Path(path).name == label.name]
    assert "timeline 9: end 40 reaches the end of the video (length 40); clipped to its last second 39" in problems_of_label
    assert any(reason.startswith("timeline 10: start 40, end 41 is no span of the video") and reason.endswith("dropped")
               for reason in problems_of_label)
    assert any(reason.startswith("timeline 11: start 5, end 4") for reason in problems_of_label)
    assert "no video" in reasons["유튜브_반려동물및동물_0009_001.json"]
    assert "no label file" in reasons["유튜브_반려동물및동물_0010.mp4"]
    assert chunk_bounds(600, 250) == [(0, 250), (250, 500), (500, 600)] and chunk_bounds(40, 250) == [(0, 40)]


def test_label_files_carry_integer_codes_and_the_category_comes_from_class_code_when_the_name_lacks_it(aihub, tmp_path):
    payload = json.loads(next(aihub.rglob("*_001.json")).read_text(encoding="utf-8"))
    assert type(payload["metadata"]["class_code"]) is int and 1 <= payload["metadata"]["class_code"] <= 8
    tops = {"place": 21, "action": 65, "emotion": 7, "relationship": 12}  # the released schema's code ranges
    for timeline in payload["timelines"]:
        assert set(timeline["attributes"]) == set(tops)
        assert all(type(code) is int and 1 <= code <= tops[name] for name, code in timeline["attributes"].items())
    # a video whose name holds no category (or not one of the eight) takes class_code's; a name that disagrees wins, reported
    for stem, class_code in (("video_0007", 4), ("유튜브_브이로그_0008", 6), ("유튜브_스포츠_0009", 3)):
        (tmp_path / f"{stem}.mp4").write_bytes(b"")
        (tmp_path / f"{stem}_001.json").write_text(json.dumps({**payload, "metadata": {**payload["metadata"], "class_code": class_code}},
                                                              ensure_ascii=False), encoding="utf-8")
    videos, problems = scan_aihub(tmp_path)
    assert {v.stem: v.category for v in videos} == {"video_0007": "스포츠", "유튜브_브이로그_0008": "음식", "유튜브_스포츠_0009": "스포츠"}
    assert [(Path(path).name, reason) for path, reason in problems] == [
        ("유튜브_스포츠_0009_001.json", "class_code 3 is 스타일링및뷰티 but the file name says 스포츠; the name kept")]


def test_a_tree_of_linked_category_folders_is_scanned_like_real_folders(aihub, tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    for folder in sorted(aihub.iterdir()):
        (linked / folder.name).symlink_to(folder, target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)  # a link loop ends
    videos, problems = scan_aihub(linked)
    originals, _ = scan_aihub(aihub)
    assert problems == [] and len(videos) == len(CATEGORIES) * 4
    assert [(v.stem, v.category, v.annotations) for v in videos] == [(v.stem, v.category, v.annotations) for v in originals]
    assert all(v.path.parent.parent == linked for v in videos)  # named through the links


def test_probes_learn_the_planted_emotions(probes):
    metrics = json.loads((probes.parent / "metrics.json").read_text())
    assert metrics["emotion"]["accuracy"] >= 0.6 and metrics["arousal_mae"] < 1.0


def test_probes_train_on_the_kemdy20_layout(tmp_path):
    """annotation/SessNN_eval.csv (two header rows, ';' ties, 'disqust') + wav/SessionNN/<SegmentID>.wav."""
    from preprocess.fixtures.writers import tone, write_wav
    emotions = ["neutral", "happy", "surprise", "angry", "sad", "disqust", "fear"]
    for session in (1, 2, 3):
        rows = [["", "", "", "", "Total Evaluation", "", ""], ["Numb", "Wstart", "Wend", "Segment ID", "Emotion", "Valence", "Arousal"]]
        for number, emotion in enumerate(emotions * 2):
            segment = f"Sess{session:02d}_script01_User{2 * session - number % 2:03d}{'FM'[number % 2]}_{number:03d}"
            write_wav(tmp_path / "wav" / f"Session{session:02d}" / f"{segment}.wav",
                      tone(220 * 1.19 ** emotions.index(emotion), 1.2, 16000, noise=0.02), 16000)
            label = f"{emotion};neutral" if number == 3 else emotion
            rows.append([number + 1, 0.0, 1.2, segment, label, 1 + number % 5, 5 - number % 5])
        (tmp_path / "annotation").mkdir(exist_ok=True)
        with open(tmp_path / "annotation" / f"Sess{session:02d}_eval.csv", "w", newline="", encoding="utf-8") as file:
            csv.writer(file).writerows(rows)
    metrics = train_highlight.main(["--train-probes", "--probe-data", str(tmp_path), "--probe-val-actors", "1",
                                    "--out", str(tmp_path / "probes")])
    assert set(metrics["emotion"]["per_class_f1"]) == {"neutral", "happy", "surprise", "angry", "sad", "disgust", "fear"}
    assert metrics["emotion"]["n"] == 14 and "Sess03" in metrics["protocol"] and metrics["emotion"]["accuracy"] >= 0.5


def test_multimodal_beats_both_baselines_and_all_positive(runs):
    root, metrics = runs
    test = {modalities: metrics[modalities]["test"] for modalities in metrics}
    for key in ("f1@0.3", "f1@val_best", "average_precision", "auroc", "all_positive_f1", "threshold@val_best"):
        assert key in test["av"]
    assert test["av"]["f1@val_best"] >= 0.9, test["av"]
    for baseline in ("a", "v"):
        assert test["av"]["f1@val_best"] > test[baseline]["f1@val_best"] + 0.1, (baseline, test)
        assert test["av"]["average_precision"] > test[baseline]["average_precision"]
    assert test["av"]["f1@val_best"] > test["av"]["all_positive_f1"] + 0.3
    saved = json.loads((root / "av" / "metrics.json").read_text(encoding="utf-8"))
    assert len(saved["test_by_category"]) == len(CATEGORIES) and "validation only" in saved["protocol"]
    split = json.loads((root / "av" / "split.json").read_text(encoding="utf-8"))
    stems = {part: {v["stem"] for v in split[part]} for part in split}
    assert not (stems["train"] & stems["val"]) and not (stems["train"] & stems["test"]) and not (stems["val"] & stems["test"])
    assert len(stems["test"]) == len(CATEGORIES) and len(stems["train"]) == 2 * len(CATEGORIES)
    reports = train_highlight.compare([root / "av", root / "a", root / "v"])
    assert set(reports) == {"multimodal (av)", "audio-only (a)", "video-only (v)", "all-positive"}


def transcode(source, target, video_codec, audio_codec, audio_rate):
    """Re-encode a clip into another container/codec pair (mkv, webm) for the predict tests."""
    wave = load_audio(source, sample_rate=audio_rate).numpy()
    with av.open(str(target), "w") as output:
        video = output.add_stream(video_codec, rate=8)
        audio = output.add_stream(audio_codec, rate=audio_rate)
        audio.layout = "mono"
        for index, (_, rgb) in enumerate(iter_frames(source)):
            if index == 0:
                video.width, video.height, video.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 8)
            output.mux(video.encode(frame))
        output.mux(video.encode(None))
        block = av.AudioFrame.from_ndarray(wave[None].astype(np.float32), format="fltp", layout="mono")
        block.sample_rate, block.pts = audio_rate, 0
        output.mux(audio.encode(block))
        output.mux(audio.encode(None))
    return target


@pytest.fixture(scope="module")
def prediction(runs, aihub, tmp_path_factory):
    root, _ = runs
    split = json.loads((root / "av" / "split.json").read_text(encoding="utf-8"))
    video = Path(split["test"][0]["path"])
    out = tmp_path_factory.mktemp("예측")
    result = train_highlight.main(["--predict", str(video), "--ckpt", str(root / "av" / "model.pt"), "--out", str(out)])
    return video, out, result



def test_reel_holds_exactly_the_segments_frames_and_audio_packets_in_order(tmp_path):
    """6-s 30-fps clip with B-frames and few keyframes: frame k shows k % 40 on its left half and
    k // 40 on its right half as grey levels; the AAC audio is noise (so no two packets are alike). The reel of
    seconds 1 and 4 must hold frames 30-59 and 120-149, each once, though the lead-in to each segment decodes only
    the frames later ones refer to, and the audio packets of those seconds, copied byte for byte and laid end to end,
    each within half a packet of its frames."""
    def frame(k):
        rgb = np.empty((48, 64, 3), np.uint8)
        rgb[:, :32], rgb[:, 32:] = 16 + 6 * (k % 40), 16 + 6 * (k // 40)
        return rgb
    times = np.arange(6 * 16000) / 16000
    source = tmp_path / "counting.mp4"
    write_video(source, (frame(k) for k in range(180)), fps=30, sample_rate=16000,
                audio=np.random.default_rng(0).normal(0, 0.05 + 0.03 * np.floor(times)))
    with av.open(str(source)) as container:
        kinds = [f.pict_type for f in container.decode(video=0)]
    with av.open(str(source)) as container:
        stream = container.streams.audio[0]
        source_packets = [(float(p.pts * stream.time_base), bytes(p)) for p in container.demux(stream) if p.size]
    assert kinds.count(av.video.frame.PictureType.B) > 30
    write_reel(source, [{"start": 1, "end": 1}, {"start": 4, "end": 4}], tmp_path / "reel.mp4")
    with av.open(str(tmp_path / "reel.mp4")) as container:
        shown = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    indices = [round((float(rgb[:, :32].mean()) - 16) / 6) + 40 * round((float(rgb[:, 32:].mean()) - 16) / 6) for rgb in shown]
    assert indices == [*range(30, 60), *range(120, 150)]
    with av.open(str(tmp_path / "reel.mp4")) as container:
        stream = container.streams.audio[0]
        reel_packets = [(float(p.pts * stream.time_base), bytes(p)) for p in container.demux(stream) if p.size]
    packet_s = 1024 / 16000
    source_time = {data: t for t, data in source_packets}
    assert len(source_time) == len(source_packets) and all(data in source_time for _, data in reel_packets)
    assert np.allclose(np.diff([t for t, _ in reel_packets]), packet_s)  # end to end
    for reel_start, source_start in ((0.0, 1.0), (1.0, 4.0)):  # each second: whole, and in sync with its frames
        copied = [(t, source_time[data]) for t, data in reel_packets if abs(source_time[data] - source_start - 0.5) < 1]
        assert [t for _, t in copied] == [t for t, _ in source_packets if copied[0][1] <= t <= copied[-1][1]]
        assert all(abs((t - reel_start) - (source_t - source_start)) <= packet_s / 2 + 1e-6 for t, source_t in copied)
        assert copied[0][1] <= source_start + packet_s / 2 and copied[-1][1] + packet_s >= source_start + 1 - packet_s / 2


def remux(source, target):
    """The same packets in another container (its own time bases: mkv 1/1000, MPEG-TS 1/90000 with ADTS AAC)."""
    with av.open(str(source)) as container, av.open(str(target), "w") as output:
        streams = {stream: output.add_stream_from_template(stream) for stream in container.streams}
        for packet in container.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream]
                output.mux(packet)
    return target


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_reel_audio_stays_in_sync_over_many_segments(tmp_path, suffix):
    """Copied AAC packets (64 ms at 16 kHz) do not fit a second exactly: one-second segments at 0, 8, ..., 40 s start
    on a packet and each ends 24 ms into one, so taking every packet that starts in a segment would put the last
    segment's audio 120 ms behind its frames. Within half a packet (+1 ms: mkv keeps milliseconds), at every packet,
    whatever the container's audio time base; no frame dropped."""
    clip = tmp_path / "long.mp4"
    write_video(clip, (np.full((48, 64, 3), 16 + k % 200, np.uint8) for k in range(410)), fps=10, sample_rate=16000,
                audio=np.random.default_rng(0).normal(0, 0.1, 41 * 16000))
    source = clip if suffix == ".mp4" else remux(clip, tmp_path / f"long{suffix}")
    starts = [0, 8, 16, 24, 32, 40]
    write_reel(source, [{"start": s, "end": s} for s in starts], tmp_path / "reel.mp4")
    with av.open(str(clip)) as container:  # raw AAC packets, as the reel holds them
        stream = container.streams.audio[0]
        source_time = {bytes(p): float(p.pts * stream.time_base) for p in container.demux(stream) if p.size}
    with av.open(str(tmp_path / "reel.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10 * len(starts)
    with av.open(str(tmp_path / "reel.mp4")) as container:
        stream = container.streams.audio[0]
        reel = [(float(p.pts * stream.time_base), source_time[bytes(p)]) for p in container.demux(stream) if p.size]
    assert len(reel) >= len(starts) * 15
    for reel_t, source_t in reel:
        span = min(range(len(starts)), key=lambda k: abs(source_t + 0.032 - starts[k] - 0.5))
        assert abs((reel_t - span) - (source_t - starts[span])) <= 0.032 + 0.001


def test_predict_writes_scores_segments_reel_and_report(prediction):
    video, out, result = prediction
    videos, _ = scan_aihub(video.parent)
    labels = next(v for v in videos if v.path == video).labels()
    with open(out / "scores.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["second"]) for r in rows] == list(range(40))
    segments = json.loads((out / "segments.json").read_text(encoding="utf-8"))["segments"]
    marked = np.zeros(40)
    for segment in segments:
        marked[segment["start"]:segment["end"] + 1] = 1
    assert (marked == labels).mean() >= 0.9  # the planted highlights are found
    reel = probe(out / "reel.mp4")
    assert reel["has_video"] and reel["has_audio"]
    assert reel["duration_s"] == pytest.approx(marked.sum(), abs=0.6)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    assert 'id="timeline"' in html and "data:image/jpeg;base64," in html and '"surprised"' in html
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S).group(1))
    assert all(1 <= value <= 5 for name in ("arousal", "valence") for value in data["probes"][name])
    assert len(data["probes"]["surprised"]) == 40 and len(data["thumbnails"]) == 40


@pytest.mark.parametrize("suffix, video_codec, audio_codec, audio_rate", [(".mkv", "mpeg4", "aac", 16000),
                                                                          (".webm", "libvpx", "libopus", 48000)])
def test_predict_on_other_containers(runs, prediction, tmp_path, suffix, video_codec, audio_codec, audio_rate):
    root, _ = runs
    video, reference_out, _ = prediction
    clip = transcode(video, tmp_path / f"clip{suffix}", video_codec, audio_codec, audio_rate)
    result = train_highlight.main(["--predict", str(clip), "--ckpt", str(root / "av" / "model.pt"), "--out", str(tmp_path / "out"),
                                   "--top-k", "1", "--min-segment", "1"])
    reference = json.loads((reference_out / "segments.json").read_text(encoding="utf-8"))["segments"]
    assert len(result["segments"]) == 1 and result["segments"][0]["start"] in {s["start"] for s in reference}
    assert probe(tmp_path / "out" / "reel.mp4")["has_audio"]


def test_segments_merge_filter_and_rank():
    scores = np.array([0.9, 0.9, 0.1, 0.8, 0.1, 0.1, 0.1, 0.7, 0.1, 0.6, 0.6, 0.6])
    assert find_segments(scores, threshold=0.5, merge_gap=1, min_segment=1) == [
        {"start": 0, "end": 3, "score": pytest.approx(0.675)}, {"start": 7, "end": 11, "score": pytest.approx(0.52)}]
    assert [(s["start"], s["end"]) for s in find_segments(scores, threshold=0.5, merge_gap=0, min_segment=2)] == [(0, 1), (9, 11)]
    assert [(s["start"], s["end"]) for s in find_segments(scores, threshold=0.5, merge_gap=0, min_segment=1, top_k=2)] == [(0, 1), (3, 3)]
    assert [(s["start"], s["end"]) for s in find_segments(scores, fraction=0.25, merge_gap=0, min_segment=1)] == [(0, 1), (3, 3)]
    assert find_segments(np.zeros(5), threshold=0.5) == []


def test_vit_and_wav2vec2_from_local_folders_and_mean_labels(aihub, tmp_path):
    from transformers import ViTConfig, ViTModel, Wav2Vec2Config, Wav2Vec2Model
    model_dir, audio_dir = tmp_path / "tiny-vit", tmp_path / "tiny-wav2vec2"
    ViTModel(ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(model_dir)
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                 num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                                 do_stable_layer_norm=True)).save_pretrained(audio_dir)
    out = tmp_path / "vit-run"
    metrics = train_highlight.main(["--data", str(aihub), "-mod", "av", "--image-encoder", "vit", "--image-model", str(model_dir),
                                    "--audio-model", str(audio_dir), "--label-agg", "mean", "--epochs", "2",
                                    "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert "test" in metrics and metrics["test"]["n"] == 4 * 40
    video = Path(json.loads((out / "split.json").read_text(encoding="utf-8"))["test"][0]["path"])
    result = train_highlight.main(["--predict", str(video), "--ckpt", str(out / "model.pt"), "--out", str(tmp_path / "pred"), "--fraction", "0.2",
                                   "--merge-gap", "0"])
    assert len(result["scores"]) == 40 and (tmp_path / "pred" / "report.html").is_file()
    assert sum(s["end"] - s["start"] + 1 for s in result["segments"]) <= 8  # --fraction 0.2 of 40 s
    with pytest.raises(InputError, match="cannot load ViTModel"):
        train_highlight.main(["--data", str(aihub), "-mod", "v", "--image-model", str(tmp_path / "no-such-vit"), "--out", str(tmp_path / "x")])


def test_bad_input_is_one_clear_line(runs, tmp_path):
    root, _ = runs
    result = subprocess.run([sys.executable, "train_highlight.py", "--data", str(tmp_path / "missing")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: AI-Hub folder not found"]
    silent = write_video(tmp_path / "silent.mp4", [solid_frame(32, 32, (10, 20, 30))] * 8, fps=4)
    with pytest.raises(InputError, match="no audio stream"):
        train_highlight.main(["--predict", str(silent), "--ckpt", str(root / "av" / "model.pt"), "--out", str(tmp_path / "p")])
    # the video-only model needs no audio
    result = train_highlight.main(["--predict", str(silent), "--ckpt", str(root / "v" / "model.pt"), "--out", str(tmp_path / "p")])
    assert len(result["scores"]) == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
def test_report_is_drawn_in_headless_chromium(prediction, tmp_path):
    _, out, result = prediction
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
               "--virtual-time-budget=5000", "--dump-dom", (out / "report.html").as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)}).stdout
    assert 'data-drawn="yes"' in dom, dom[-2000:]
    path = re.search(r'<path id="score-line" d="([^"]+)"', dom)
    assert path and path.group(1).count("L") == len(result["scores"]) - 1  # one point per second
    assert dom.count('class="segment"') == len(result["segments"]) >= 1
    assert dom.count('class="probe-line"') == 8 + 2  # 8 emotions, arousal, valence
    assert f"{len(result['scores'])} s scored" in dom
