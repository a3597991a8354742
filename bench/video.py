"""Speed of our frame sampler + audio loader against a bare PyAV decode of the same file.

    python bench/video.py                  # a generated 60-s 1280x720 30-fps h264+aac clip
    python bench/video.py --video PATH     # any video with an audio stream

The generated clip is cached in the temp dir (generating it is not timed). Timed, best of --repeats:
  (a) reference: PyAV decodes every video frame (no conversion), then the audio stream; the faster of PyAV's
      default threading and frame threading (thread_type AUTO) on this machine;
  (b) ours: iter_frames(fps=1, size=224, center_crop=True) (RGB) + load_audio(sample_rate=16000);
  (c) floor of a sampler that skips: PyAV decodes only the reference frames (skip_frame NONREF), then the audio.
Prints key=value lines; the headline, last, is sampler_vs_decode_ratio = (b) / (a), goal <= 1.2. Our sampler
lets the decoder drop the non-reference frames shown before its next target (the samples stay those of a full
decode), so it can beat (a); (c) is what no sampler of every reference frame beats:
sampler_vs_reference_frames_decode_ratio = (b) / (c).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from preprocess.fixtures.writers import write_video  # noqa: E402
from preprocess.media import iter_frames, load_audio, probe  # noqa: E402


def make_clip(path, *, seconds=60, fps=30, height=720, width=1280, sample_rate=48000):
    """Camera-like content: a blotchy texture panning sideways plus sensor noise (about 3-4 Mbit/s,
    like a phone or web clip; flat synthetic frames would decode unrealistically fast), and a stereo
    tone with noise; h264 (veryfast, crf 23, B-frames) + AAC 48 kHz."""
    rng = np.random.default_rng(0)
    pan_px = 4  # per frame
    blotches = rng.integers(0, 256, (height // 8 + 1, (width + pan_px * seconds * fps) // 8 + 1, 3),
                            dtype=np.uint8)
    texture = np.repeat(np.repeat(blotches, 8, axis=0), 8, axis=1)[:height]
    sensor_noise = [rng.integers(-16, 17, (height, width, 3), dtype=np.int16) for _ in range(7)]

    def frames():
        for index in range(seconds * fps):
            view = texture[:, pan_px * index:pan_px * index + width].astype(np.int16)
            yield np.clip(view + sensor_noise[index % len(sensor_noise)], 0, 255).astype(np.uint8)

    times = np.arange(seconds * sample_rate) / sample_rate
    left = 0.3 * np.sin(2 * np.pi * 440 * times) + rng.normal(0, 0.02, len(times))
    right = 0.3 * np.sin(2 * np.pi * 660 * times) + rng.normal(0, 0.02, len(times))
    write_video(path, frames(), fps=fps, audio=np.stack([left, right], axis=1), sample_rate=sample_rate,
                crf=23, preset="veryfast", audio_bit_rate=128000)


def bare_decode(path, skip_frame="DEFAULT", thread_type=None):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if thread_type:
            stream.thread_type = thread_type
        stream.codec_context.skip_frame = skip_frame
        for _ in container.decode(stream):
            pass
    with av.open(str(path)) as container:
        for _ in container.decode(container.streams.audio[0]):
            pass


def bare_decode_frame_threads(path):
    bare_decode(path, thread_type="AUTO")


def bare_decode_reference_frames(path):
    bare_decode(path, skip_frame="NONREF")


def our_pipeline(path):
    frame_count = sum(1 for _ in iter_frames(path, fps=1, size=224, center_crop=True))
    wave = load_audio(path, sample_rate=16000)
    return frame_count, len(wave)


def best_seconds(functions, path, repeats):
    """Best wall time of each function, run alternately so a burst of load elsewhere hits both."""
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for position, function in enumerate(functions):
            start = time.perf_counter()
            function(path)
            best[position] = min(best[position], time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, help="video to time (default: the generated 60-s 720p30 clip)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, the best counts (default %(default)s)")
    args = parser.parse_args()

    video = args.video
    if video is None:
        video = Path(tempfile.gettempdir()) / "bench_video_60s_1280x720_30fps.mp4"
        if not video.exists():
            print(f"generating {video} (not timed) ...", flush=True)
            partial = video.with_suffix(".partial.mp4")
            make_clip(partial)
            partial.rename(video)
    info = probe(video)
    frames_sampled, audio_samples = our_pipeline(video)  # warm-up: file cache, imports, kernels
    default_threads_s, frame_threads_s, sampler_s, reference_frames_s = best_seconds(
        [bare_decode, bare_decode_frame_threads, our_pipeline, bare_decode_reference_frames], video, args.repeats)
    decode_s = min(default_threads_s, frame_threads_s)
    print(f"video={video}")
    print(f"video_size={info['width']}x{info['height']} fps={info['fps']:.2f} "
          f"audio_sample_rate={info['audio_sample_rate']}")
    print(f"frames_sampled={frames_sampled} audio_samples_16k={audio_samples} "
          f"bit_rate_mbps={video.stat().st_size * 8 / info['duration_s'] / 1e6:.2f}")
    print(f"decode_default_threads_s={default_threads_s:.3f} decode_frame_threads_s={frame_threads_s:.3f}")
    print(f"decode_s={decode_s:.3f}")
    print(f"sampler_s={sampler_s:.3f}")
    print(f"reference_frames_decode_s={reference_frames_s:.3f}")
    print(f"sampler_vs_reference_frames_decode_ratio={sampler_s / reference_frames_s:.3f}")
    print(f"video_seconds={info['duration_s']:.2f}")
    print(f"realtime_factor={info['duration_s'] / sampler_s:.1f}")
    print(f"sampler_vs_decode_ratio={sampler_s / decode_s:.3f}")


if __name__ == "__main__":
    main()
