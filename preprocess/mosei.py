"""CMU-MOSEI for FV2ES: raw release -> the processed layout train_fv2es.py reads.

    python -m preprocess.mosei RAW_DIR OUT_DIR [--img-interval 500]

Raw, under RAW_DIR (any depth):
    <video_id>.mp4                                   the full videos (Raw/Videos/Full/Combined/)
    Transcript/.../<video_id>.txt                    segmented transcripts, lines `video_id___clip___start___end___text`
    Labels/*.csv                                     the annotators' rows (MTurk batch results): Input.VIDEO_ID,
                                                     Input.CLIP, Answer.anger, Answer.disgust, Answer.fear,
                                                     Answer.happiness, Answer.sadness, Answer.surprise
An emotion is present in a clip when its annotators' scores sum to more than 0 (6 presence labels, multi-label).
pom_extra_sqa_mono_results.csv writes Input.VIDEO_ID as `<prefix>/<video_id>`: the prefix is stripped (as public
preprocessing scripts do with split("/")[1]). Listed in failures.csv, never lost quietly: a CSV without those columns
(skipped), a row whose clip or scores are not numbers, every labelled clip that matches no transcript line (with its
count of label rows), a transcript line that does not parse, a clip whose video or frames are missing. Folders that
are symbolic links are followed.
Processed, under OUT_DIR (written with preprocess.fv2es_layout; reader: preprocess.fv2es_reader):
    MOSEI_RAW_PROCESSED/meta.json    clip_id -> {text, label[6], start_time, end_time, video} (the released set: meta.pkl)
    MOSEI_RAW_PROCESSED/<video>_<clip>/audio.wav, image_{i}.jpg (224x224), faces.npy (ours: uint8 (N, 48, 48, 3))
    MOSEI_SPLIT/{train,valid,test}_split.txt     clip ids, grouped by video (80/10/10)
    MOSEI_HCF_FEATURES/<clip_id>.npz             t, a, v hand-crafted feature sequences
    failures.csv
Frames are sampled by timestamp every --img-interval ms (default 500 = 2 fps), one pass per video.
"""
import argparse
import csv
from pathlib import Path

import numpy as np

from common import InputError, atomic_write, progress, write_failures, write_json
from preprocess.fv2es_layout import (LAYOUT, frames_for_segments, load_channels, make_cropper, square_jpeg, write_hcf,
                                     write_split, write_wave)
from preprocess.tree import walk_files

EMOTIONS = ("anger", "disgust", "fear", "happy", "sad", "surprise")  # the presence labels, in meta.json order
ANSWER_COLUMNS = ("Answer.anger", "Answer.disgust", "Answer.fear", "Answer.happiness", "Answer.sadness", "Answer.surprise")


def video_id_of(text):
    """'<prefix>/abc123' -> 'abc123' (pom_extra_sqa_mono_results.csv); 'abc123' stays."""
    return text.strip().rsplit("/", 1)[-1]


def read_labels(raw_dir):
    """(sums, row_counts, problems): {(video_id, clip): float (6,) summed annotator scores} and {(video_id, clip): label
    rows} from every CSV under raw_dir that has the label columns, and [(item, problem)] for the CSVs and rows skipped.
    No usable label row at all is an InputError."""
    sums, row_counts, problems = {}, {}, []
    for path in walk_files(raw_dir, {".csv"}):
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
            reader = csv.DictReader(file)
            missing = [c for c in ("Input.VIDEO_ID", "Input.CLIP", *ANSWER_COLUMNS) if c not in (reader.fieldnames or [])]
            if missing:
                problems.append((str(path), f"not a label CSV (no column {', '.join(missing)}); skipped"))
                continue
            for line, row in enumerate(reader, start=2):
                try:
                    video_id, clip = video_id_of(row["Input.VIDEO_ID"] or ""), str(int(float(row["Input.CLIP"])))
                    scores = np.array([float(row[c] or 0) for c in ANSWER_COLUMNS], np.float32)
                except (TypeError, ValueError, OverflowError):
                    video_id, scores = "", None
                if not video_id or scores is None or not np.isfinite(scores).all():
                    problems.append((f"{path.name}:{line}", "no video id, or Input.CLIP / an Answer score is not a number; row skipped"))
                    continue
                sums[video_id, clip] = sums.get((video_id, clip), 0) + scores
                row_counts[video_id, clip] = row_counts.get((video_id, clip), 0) + 1
    if not sums:
        raise InputError(f"{raw_dir}: no usable label row (Labels/*.csv with Input.VIDEO_ID, Input.CLIP, Answer.* columns)")
    return sums, row_counts, problems


def read_transcripts(raw_dir):
    """({video_id: {clip: (start, end, text)}}, problems) from the segmented transcript files; in a file that has
    such lines, a line that is not video___clip___start___end___text with numbers where numbers go is counted."""
    transcripts, problems = {}, []
    for path in walk_files(raw_dir, {".txt"}):
        good = bad = 0
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.strip().split("___", 4)
            try:
                video, clip, start, end, text = parts
                transcripts.setdefault(video, {})[str(int(float(clip)))] = (float(start), float(end), text.strip())
                good += 1
            except (ValueError, OverflowError):
                bad += bool(line.strip())
        if good and bad:  # a .txt without one such line is no segmented transcript (a full one, a readme)
            problems.append((str(path), f"{bad} line(s) not video___clip___start___end___text; skipped"))
    return transcripts, problems


def preprocess(raw_dir, out_dir, *, img_interval=500, image_size=224, seed=0, cropper=None):
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    labels, label_rows, failures = read_labels(raw_dir)
    transcripts, transcript_problems = read_transcripts(raw_dir)
    failures += transcript_problems
    videos = {path.stem: path for path in walk_files(raw_dir, {".mp4"})}
    processed, hcf_dir = out_dir / LAYOUT["mosei"][0], out_dir / LAYOUT["mosei"][2]
    cropper = cropper or make_cropper()
    meta, by_video, labelled_clips = {}, {}, {}
    for video_id, clip in labels:
        labelled_clips.setdefault(video_id, []).append(clip)
    for video_id in progress(sorted(labelled_clips), desc="MOSEI videos"):
        clips = {clip: span for clip, span in transcripts.get(video_id, {}).items() if (video_id, clip) in labels}
        failures += [(f"{video_id}_{clip}", f"{label_rows[video_id, clip]} label row(s) match no transcript line")
                     for clip in sorted(labelled_clips[video_id], key=int) if clip not in clips]
        if video_id not in videos:
            failures += [(f"{video_id}_{clip}", f"{raw_dir}: no {video_id}.mp4") for clip in clips]
            continue
        try:
            mono, _ = load_channels(videos[video_id])
            frames = {clip: [] for clip in clips}
            for clip, _, rgb in frames_for_segments(videos[video_id], {c: s[:2] for c, s in clips.items()}, interval_ms=img_interval):
                frames[clip].append(rgb)
        except InputError as error:
            failures += [(f"{video_id}_{clip}", str(error)) for clip in clips]
            continue
        for clip, (start, end, text) in sorted(clips.items()):
            clip_id, folder = f"{video_id}_{clip}", processed / f"{video_id}_{clip}"
            if not frames[clip]:
                failures.append((clip_id, f"{videos[video_id]}: no frame at or after {start:.2f} s"))
                continue
            span = slice(int(start * 16000), max(int(start * 16000) + 1, int(end * 16000)))
            write_wave(folder / "audio.wav", mono[span])
            for index, rgb in enumerate(frames[clip]):
                square_jpeg(folder / f"image_{index}.jpg", rgb, image_size)
            faces, _ = cropper.crop_batch(frames[clip])
            atomic_write(folder / "faces.npy", lambda f, faces=faces: np.save(f, faces, allow_pickle=False))
            write_hcf(hcf_dir / f"{clip_id}.npz", text, mono[span], faces)
            meta[clip_id] = {"text": text, "label": (labels[(video_id, clip)] > 0).astype(int).tolist(), "start_time": start,
                             "end_time": end, "video": video_id}
            by_video.setdefault(video_id, []).append(clip_id)
    write_json(processed / "meta.json", meta)
    write_split(out_dir / LAYOUT["mosei"][1], by_video, seed=seed)
    write_failures(out_dir, failures)
    return len(meta), failures


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m preprocess.mosei", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw_dir", type=Path, help="the raw release: videos, segmented transcripts, label CSVs")
    parser.add_argument("out_dir", type=Path, help="where the processed layout goes (train_fv2es.py --data)")
    parser.add_argument("--img-interval", type=int, default=500, help="ms between sampled frames (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="side of the saved square images (default %(default)s)")
    parser.add_argument("--mtcnn", default="weights/mtcnn", help="folder with MTCNN pnet/rnet/onet.pt; centre crops without them (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the video-grouped split (default %(default)s)")
    args = parser.parse_args(argv)
    kept, failures = preprocess(args.raw_dir, args.out_dir, img_interval=args.img_interval, image_size=args.image_size,
                                seed=args.seed, cropper=make_cropper(args.mtcnn))
    print(f"CMU-MOSEI: {kept} clips written under {args.out_dir}; {len(failures)} skipped (failures.csv)")


if __name__ == "__main__":
    from common import run_main
    run_main(main)
