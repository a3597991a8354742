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
"""
import argparse
import contextlib
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import train_highlight  # noqa: E402
from bench.video import bare_decode, bare_decode_frame_threads, bare_decode_reference_frames, make_clip  # noqa: E402
from common import save_checkpoint  # noqa: E402
from models.highlight import EmotionProbe  # noqa: E402
from preprocess.media import probe  # noqa: E402
from preprocess.ravdess import EMOTIONS  # noqa: E402
from preprocess.report import write_reel  # noqa: E402

PREDICT_FLAGS = ["--fraction", "0.1", "--top-k", "5"]


def clip_path(seconds, base=None):
    """The generated clip of this length, cached in the temp dir (bench/video.py's naming). With base (a shorter
    generated clip whose length divides `seconds`), that clip repeated back to back by stream copy: the same
    bit rate and decoding work per second, made in seconds instead of the encoder's tens of minutes."""
    path = Path(tempfile.gettempdir()) / f"bench_video_{seconds}s_1280x720_30fps{'_repeated' if base else ''}.mp4"
    if not path.exists():
        print(f"generating {path} (not timed) ...", file=sys.stderr, flush=True)
        partial = path.with_suffix(".partial.mp4")
        if base:
            repeat_clip(clip_path(base), partial, times=seconds // base, seconds=base)
        else:
            make_clip(partial, seconds=seconds)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=120, help="length of the timed clip (default %(default)s)")
    parser.add_argument("--long-seconds", type=int, default=1200, help="length of the long clip for the memory ratio (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating; the best counts (default %(default)s)")
    parser.add_argument("--profile", action="store_true", help="also print predict's cProfile hot spots (to stderr)")
    args = parser.parse_args()

    work = Path(tempfile.gettempdir()) / "bench_pipeline"
    work.mkdir(exist_ok=True)
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
