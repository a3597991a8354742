"""preprocess.iemocap / preprocess.mosei: the raw fixtures become the SPEC 5 processed layout, frames are taken by
timestamp, the speaker's side is picked, labels and splits are right, and the reader accepts meta.json and meta.pkl."""
import colorsys
import csv
import json
import pickle
import shutil

import numpy as np
import pytest
import soundfile
from PIL import Image

from common import InputError
from preprocess import iemocap, mosei
from preprocess.fixtures.iemocap import make_iemocap
from preprocess.fixtures.mosei import make_mosei
from preprocess.fv2es_layout import make_cropper
from preprocess.timeline import grid_times
from preprocess.fv2es_reader import read_processed
from preprocess.iemocap import EMOTIONS, loso_splits, speaker_side
from preprocess.tree import walk_files

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def iemocap_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("iemocap")
    make_iemocap(root)
    return root


@pytest.fixture(scope="module")
def mosei_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosei")
    make_mosei(root)
    return root


def test_grid_times_take_the_grid_inside_the_segment_or_the_next_one():
    assert grid_times(0.5, 1.7, 0.5) == [0.5, 1.0, 1.5]
    assert grid_times(0.6, 0.9, 0.5) == [1.0]  # none inside: the first at or after start
    assert grid_times(2.0, 4.0, 1.0) == [2.0, 3.0]  # end excluded
    # brute force over many segments
    rng = np.random.default_rng(0)
    for start, length in zip(rng.uniform(0, 20, 50), rng.uniform(0.05, 5, 50)):
        inside = [k * 0.25 for k in range(200) if start <= k * 0.25 < start + length]
        assert grid_times(start, start + length, 0.25) == (inside or [np.ceil(start / 0.25) * 0.25])


def test_speaker_side_follows_session_gender_letter():
    assert speaker_side("Ses01F_impro01_F000") == "L"
    assert speaker_side("Ses01F_impro01_M003") == "R"
    assert speaker_side("Ses02M_script01_1_M010") == "L"
    assert speaker_side("Ses02M_script01_1_F011") == "R"


def dominant_hue(rgb):
    centre = rgb[rgb.shape[0] // 2 - 3:rgb.shape[0] // 2 + 3, rgb.shape[1] // 2 - 3:rgb.shape[1] // 2 + 3].reshape(-1, 3).mean(0) / 255
    return colorsys.rgb_to_hsv(*centre)[0] * 360


def test_iemocap_processed_layout_frames_by_timestamp_and_side(iemocap_tree):
    processed = iemocap_tree / "processed"
    meta = json.loads((processed / "IEMOCAP_RAW_PROCESSED" / "meta.json").read_text())
    raw_rows = [line.split("\t") for path in sorted((iemocap_tree / "raw").rglob("EmoEvaluation/*.txt"))
                for line in path.read_text().splitlines() if line.startswith("[")]
    kept = {row[1] for row in raw_rows if row[2] in EMOTIONS and not row[1].startswith("Ses02M_impro03")}
    assert set(meta) == kept  # xxx dropped; the dialogue whose avi is missing is skipped
    failures = list(csv.reader(open(processed / "failures.csv")))[1:]
    assert {row[0] for row in failures} == {row[1] for row in raw_rows if row[1].startswith("Ses02M_impro03") and row[2] in EMOTIONS}
    assert all("no such file" in row[1] for row in failures)
    for utt_id, entry in meta.items():
        folder = processed / "IEMOCAP_RAW_PROCESSED" / utt_id.rsplit("_", 1)[0] / utt_id
        side = speaker_side(utt_id)
        expected = len([k for k in range(100) if entry["start_time"] <= k * 0.5 < entry["end_time"]])
        for half in "LR":
            assert len(list(folder.glob(f"image_{half}_*.jpg"))) == expected, utt_id
        assert Image.open(folder / "image_L_0.jpg").size == (224, 224)
        faces = np.load(folder / f"faces_{side}.npy")
        assert faces.shape == (expected, 48, 48, 3) and faces.dtype == np.uint8
        # the planted hue (60 deg per class) is on the speaker's half at every sampled time
        label = EMOTIONS.index(entry["label"])
        for index in range(expected):
            hue = dominant_hue(np.asarray(Image.open(folder / f"image_{side}_{index}.jpg")))
            assert min(abs(hue - 60 * label), 360 - abs(hue - 60 * label)) < 12, (utt_id, index, hue)
        wave, rate = soundfile.read(folder / "audio.wav")
        assert rate == 16000 and abs(len(wave) - (entry["end_time"] - entry["start_time"]) * 16000) <= 1
        assert (folder / "audio_L.wav").is_file() and (folder / "audio_R.wav").is_file()
        with np.load(processed / "IEMOCAP_HCF_FEATURES" / f"{utt_id}.npz") as hcf:
            assert [hcf[m].shape[1] for m in "tav"] == [300, 144, 35] and len(hcf["v"]) == expected


def test_iemocap_splits_are_grouped_by_dialogue_and_readable(iemocap_tree):
    items, splits, failures = read_processed(iemocap_tree / "processed", "iemocap")
    assert failures == []
    groups = {split: {items[i].group for i in ids} for split, ids in splits.items()}
    assert not (groups["train"] & groups["valid"]) and not (groups["train"] & groups["test"]) and not (groups["valid"] & groups["test"])
    assert sorted(sum(splits.values(), [])) == sorted(items)
    item = items[splits["train"][0]]
    assert item.label.sum() == 1 and item.side == speaker_side(item.id) and item.folder.is_dir()
    loso = loso_splits(items, 2)
    assert {items[i].session for i in loso["test"]} == {2}
    assert {items[i].session for i in loso["train"] + loso["valid"]} == {1} and loso["valid"]
    with pytest.raises(InputError, match="session 7"):
        loso_splits(items, 7)


def test_reader_accepts_the_released_meta_pkl_and_reports_missing_files(iemocap_tree, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(iemocap_tree / "processed" / "IEMOCAP_SPLIT", copy / "IEMOCAP_SPLIT")
    meta = json.loads((iemocap_tree / "processed" / "IEMOCAP_RAW_PROCESSED" / "meta.json").read_text())
    (copy / "IEMOCAP_RAW_PROCESSED").mkdir()
    with open(copy / "IEMOCAP_RAW_PROCESSED" / "meta.pkl", "wb") as file:
        pickle.dump({k: {**v, "label": EMOTIONS.index(v["label"])} for k, v in meta.items()}, file)  # labels as indices
    items, _, _ = read_processed(copy, "iemocap")
    assert {k: int(items[k].label.argmax()) for k in meta} == {k: EMOTIONS.index(v["label"]) for k, v in meta.items()}
    (copy / "IEMOCAP_SPLIT" / "test_split.txt").unlink()
    with pytest.raises(InputError, match="test_split.txt: split file not found"):
        read_processed(copy, "iemocap")
    with pytest.raises(InputError, match="no Session"):
        iemocap.main([str(tmp_path), str(tmp_path / "out")])


def test_mosei_presence_labels_split_and_frames(mosei_tree):
    processed = mosei_tree / "processed"
    meta = json.loads((processed / "MOSEI_RAW_PROCESSED" / "meta.json").read_text())
    sums, prefixed = {}, set()
    for path in sorted((mosei_tree / "raw" / "Labels").glob("*.csv")):
        with open(path) as file:
            for row in csv.DictReader(file):
                key = f"{row['Input.VIDEO_ID'].split('/')[-1]}_{row['Input.CLIP']}"  # pom_extra_sqa_mono_results: <prefix>/<id>
                sums[key] = sums.get(key, 0) + np.array([float(row[c]) for c in mosei.ANSWER_COLUMNS])
                prefixed |= {key} if "/" in row["Input.VIDEO_ID"] else set()
    assert set(meta) == {k for k in sums if not k.endswith("_3")}  # clip 3 has no transcript line
    assert {k for k in prefixed if not k.endswith("_3")} == {f"{v}_{c}" for v in ("vid002c", "vid005c") for c in range(3)}  # matched
    failures = list(csv.reader(open(processed / "failures.csv")))[1:]
    assert failures == [[k, "1 label row(s) match no transcript line"] for k in sorted(sums) if k.endswith("_3")]
    for clip_id, entry in meta.items():
        assert entry["label"] == (sums[clip_id] > 0).astype(int).tolist()
        expected = len([k for k in range(100) if entry["start_time"] <= k * 0.5 < entry["end_time"]])
        assert len(list((processed / "MOSEI_RAW_PROCESSED" / clip_id).glob("image_*.jpg"))) == expected
        assert np.load(processed / "MOSEI_RAW_PROCESSED" / clip_id / "faces.npy").shape == (expected, 48, 48, 3)
    items, splits, _ = read_processed(processed, "mosei")
    videos = {split: {items[i].group for i in ids} for split, ids in splits.items()}
    assert not (videos["train"] & videos["test"]) and not (videos["valid"] & videos["test"]) and all(videos.values())
    assert any(item.label.sum() > 1 for item in items.values())  # multi-label


def test_mosei_label_files_that_are_not_labels_and_bad_rows_are_listed_not_fatal(mosei_tree, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(mosei_tree / "raw" / "Labels", raw / "Labels")
    shutil.copytree(mosei_tree / "raw" / "Transcript", raw / "Transcript")
    (raw / "Labels" / "extra_sentiment_only.csv").write_text("Input.VIDEO_ID,Input.CLIP,Answer.sentiment\nvid000a,0,2\n")
    with open(raw / "Labels" / "Batch_2980374_batch_results.csv", "a", newline="") as file:
        csv.writer(file).writerows([["vid000a", "zero", 1, 0, 0, 0, 0, 0], ["", 1, 1, 0, 0, 0, 0, 0], ["vid000a", 1, "nan", 0, 0, 0, 0, 0]])
    sums, row_counts, problems = mosei.read_labels(raw)
    lines = len((raw / "Labels" / "Batch_2980374_batch_results.csv").read_text().splitlines())
    assert problems == [(f"Batch_2980374_batch_results.csv:{line}", "no video id, or Input.CLIP / an Answer score is not a number; row skipped")
                        for line in (lines - 2, lines - 1, lines)] + [
        (str(raw / "Labels" / "extra_sentiment_only.csv"), "not a label CSV (no column Answer.anger, Answer.disgust, Answer.fear, "
                                                           "Answer.happiness, Answer.sadness, Answer.surprise); skipped")]
    assert row_counts["vid002c", "0"] == 2 and ("pom/vid002c", "0") not in sums and len(sums) == 8 * 4
    (raw / "Transcript" / "vid000a.txt").write_text("vid000a___0___0.4___1.6___hello there\nvid000a___one___x___y___broken\n")
    transcripts, problems = mosei.read_transcripts(raw)
    assert transcripts["vid000a"] == {"0": (0.4, 1.6, "hello there")} and len(transcripts) == 8
    assert problems == [(str(raw / "Transcript" / "vid000a.txt"), "1 line(s) not video___clip___start___end___text; skipped")]
    for name in ("Batch_2980374_batch_results.csv", "pom_extra_sqa_mono_results.csv"):
        (raw / "Labels" / name).unlink()
    with pytest.raises(InputError, match="no usable label row"):
        mosei.read_labels(raw)


def test_raw_trees_of_linked_folders_are_read_like_real_folders(iemocap_tree, mosei_tree, tmp_path):
    linked = tmp_path / "mosei"
    linked.mkdir()
    for part in ("Labels", "Transcript", "Videos"):
        (linked / part).symlink_to(mosei_tree / "raw" / part, target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)
    assert mosei.read_labels(linked)[0].keys() == mosei.read_labels(mosei_tree / "raw")[0].keys()
    assert mosei.read_transcripts(linked) == mosei.read_transcripts(mosei_tree / "raw")
    assert [p.name for p in walk_files(linked, {".mp4"})] == [f"vid{v:03d}{'abc'[v % 3]}.mp4" for v in range(8)]
    raw = tmp_path / "iemocap"
    raw.mkdir()
    (raw / "Session1").symlink_to(iemocap_tree / "raw" / "Session1", target_is_directory=True)
    kept, failures = iemocap.preprocess(raw, tmp_path / "out", cropper=make_cropper(None))
    assert kept == 3 * 6 and failures == []


def test_centre_crop_fallback_is_the_true_centre():
    frame = np.zeros((60, 100, 3), np.uint8)
    frame[:, 20:80] = 200  # the central 60x60 square
    crop, found = make_cropper(None).crop(frame)
    assert crop.shape == (48, 48, 3) and not found and (crop == 200).all()
