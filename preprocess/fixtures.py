"""Tiny synthetic datasets in the exact on-disk layouts of the real ones, for tests and smoke runs.

    python -m preprocess.fixtures ravdess /tmp/ravdess_tiny --seed 0

Each kind is one `make_<kind>(out_dir, *, seed=0, ...)` function that writes the layout and returns
the sorted list of files written, plus one entry in KINDS. The writers (`write_video`, `write_wav`)
and signal helpers (`tone`, `solid_frame`, `hue_rgb`) are shared by all kinds.
"""
import argparse
import colorsys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile

from preprocess.aihub import make_aihub
from preprocess.iemocap import make_iemocap
from preprocess.kemdy20 import make_kemdy20
from preprocess.meld import make_meld
from preprocess.mosei import make_mosei


# ------------------------------------------------------------------------------------------ writers

def write_video(path, frames, *, fps, audio=None, sample_rate=16000, crf=18, preset="veryfast",
                audio_bit_rate=128000, faststart=False):
    """Encode frames (an iterable of uint8 RGB arrays (H, W, 3), H and W even; consumed one at a
    time) as h264 yuv420p into an .mp4, with audio (float array (samples,) or (samples, channels) in
    [-1, 1]) as AAC when given. Audio is interleaved with the video as it goes. crf/preset are
    libx264's quality/speed knobs (crf 18 keeps flat colours within a few levels); faststart puts
    the index (moov) before the data, as streaming sites do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(100_000)
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32)
        audio = audio[:, None] if audio.ndim == 1 else audio  # (samples, channels)
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", container_options=container_options) as container:
        video_stream = container.add_stream("libx264", rate=rate)
        video_stream.pix_fmt = "yuv420p"
        video_stream.options = {"crf": str(crf), "preset": preset}
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = "mono" if audio.shape[1] == 1 else "stereo"
            audio_stream.bit_rate = audio_bit_rate
        audio_written = 0
        frame_count = 0
        for frame_count, rgb in enumerate(frames, start=1):
            if frame_count == 1:
                height, width = rgb.shape[:2]
                if height % 2 or width % 2:
                    raise ValueError(f"{path}: frame size {width}x{height} must be even for yuv420p")
                video_stream.width, video_stream.height = width, height
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8),
                                                     format="rgb24")
            video_frame.pts = frame_count - 1
            video_frame.time_base = 1 / rate
            container.mux(video_stream.encode(video_frame))
            if audio_stream is not None:  # audio up to the end of this video frame
                audio_until = min(len(audio), round(frame_count / rate * sample_rate))
                audio_written = _mux_audio(container, audio_stream, audio, audio_written, audio_until,
                                           sample_rate)
        if frame_count == 0:
            raise ValueError(f"{path}: no frames to write")
        container.mux(video_stream.encode(None))
        if audio_stream is not None:
            _mux_audio(container, audio_stream, audio, audio_written, len(audio), sample_rate)
            container.mux(audio_stream.encode(None))
    return path


def _mux_audio(container, stream, audio, start, end, sample_rate):
    if end > start:
        block = np.ascontiguousarray(audio[start:end].T)  # (channels, samples), planar float
        audio_frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=stream.layout.name)
        audio_frame.sample_rate = sample_rate
        audio_frame.pts = start
        audio_frame.time_base = Fraction(1, sample_rate)
        container.mux(stream.encode(audio_frame))
    return max(start, end)


def write_wav(path, wave, sample_rate, subtype="PCM_16"):
    """Write a float array (samples,) or (samples, channels) in [-1, 1] with soundfile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.asarray(wave), sample_rate, subtype=subtype)
    return path


# ---------------------------------------------------------------------------------- signal helpers

def tone(frequency_hz, duration_s, sample_rate, *, amplitude=0.3, noise=0.0, rng=None):
    """A sine at frequency_hz plus white noise of standard deviation noise: float32 (samples,)."""
    times = np.arange(round(duration_s * sample_rate)) / sample_rate
    wave = amplitude * np.sin(2 * np.pi * frequency_hz * times)
    if noise:
        wave = wave + (rng or np.random.default_rng(0)).normal(0.0, noise, len(times))
    return wave.astype(np.float32)


def hue_rgb(hue_deg, saturation=1.0, value=1.0):
    """An (r, g, b) uint8 triple from hue in degrees, saturation and value in [0, 1]."""
    red, green, blue = colorsys.hsv_to_rgb((hue_deg % 360) / 360, saturation, value)
    return tuple(round(channel * 255) for channel in (red, green, blue))


def solid_frame(height, width, rgb, *, noise=0.0, rng=None):
    """A uint8 (height, width, 3) frame of one colour plus per-pixel Gaussian noise (std in 0-255)."""
    frame = np.empty((height, width, 3), np.float32)
    frame[:] = rgb
    if noise:
        frame += (rng or np.random.default_rng(0)).normal(0.0, noise, frame.shape)
    return np.clip(frame, 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------- RAVDESS

RAVDESS_EMOTIONS = {1: "neutral", 2: "calm", 3: "happy", 4: "sad",
                    5: "angry", 6: "fearful", 7: "disgust", 8: "surprised"}
RAVDESS_TONE_HZ = {emotion: 220.0 * 1.19 ** (emotion - 1) for emotion in RAVDESS_EMOTIONS}  # 220-745 Hz
RAVDESS_HUE_DEG = {emotion: 45.0 * (emotion - 1) for emotion in RAVDESS_EMOTIONS}


def ravdess_name(modality, emotion, intensity, statement, repetition, actor, channel=1):
    """The real RAVDESS stem MM-VV-EE-II-SS-RR-AA, e.g. 01-01-03-02-01-02-05."""
    return "-".join(f"{field:02d}" for field in
                    (modality, channel, emotion, intensity, statement, repetition, actor))


def _ravdess_trials(emotions, all_trials):
    """(emotion, intensity, statement, repetition) per actor; neutral has intensity 01 only, like the
    real set. Without all_trials, one (statement, repetition) per (emotion, intensity), cycling
    through the four combinations so every value appears."""
    combinations = [(1, 1), (2, 2), (1, 2), (2, 1)]
    trials = []
    for emotion in emotions:
        for intensity in ((1,) if emotion == 1 else (1, 2)):
            if all_trials:
                trials += [(emotion, intensity, s, r) for s, r in combinations]
            else:
                trials.append((emotion, intensity, *combinations[len(trials) % 4]))
    return trials


def make_ravdess(out_dir, *, actors=(1, 2, 3, 4, 5, 6), emotions=tuple(RAVDESS_EMOTIONS), seed=0,
                 all_trials=False, duration_s=0.8, fps=15, height=48, width=64, sample_rate=16000):
    """RAVDESS speech layout: Actor_XX/MM-01-EE-II-SS-RR-AA.{mp4,wav}, per trial an AV mp4 (01, h264 +
    AAC), its silent twin (02, the same frames, no audio stream) and the audio-only wav (03, the same
    audio, 16-bit PCM). Returns the sorted list of files written.

    Planted signal (learnable, not trivial):
    - audio: a tone at RAVDESS_TONE_HZ[emotion] (220 Hz x 1.19^(emotion-1)) times a per-actor pitch
      factor in [0.95, 1.05] (female, even actors, at the high end), with a random 3-8 Hz syllable
      envelope; intensity 02 doubles the amplitude and adds the 2nd harmonic; white noise std 0.05.
    - video: a grey background whose level depends on the actor, a centred square whose hue is
      RAVDESS_HUE_DEG[emotion] (45 deg steps) jittered by +-10 deg per trial and shifted up to 4 px;
      intensity 02 is fully saturated, 01 half; per-pixel noise: a fixed texture of std 12 per trial
      plus std 3 per frame.
    The default set (6 actors x 15 trials x 3 files, 0.8-s clips) is ~3.3 MB and takes a few seconds.
    """
    out_dir = Path(out_dir)
    written = []
    for actor in actors:
        actor_rng = np.random.default_rng([seed, actor])
        pitch_factor = (1.02 if actor % 2 == 0 else 0.98) + actor_rng.uniform(-0.03, 0.03)
        background = 50 + 20 * (actor % 5)
        for emotion, intensity, statement, repetition in _ravdess_trials(emotions, all_trials):
            rng = np.random.default_rng([seed, actor, emotion, intensity, statement, repetition])
            wave = _ravdess_audio(emotion, intensity, pitch_factor, duration_s, sample_rate, rng)
            frames = _ravdess_frames(emotion, intensity, background, duration_s, fps, height, width, rng)
            folder = out_dir / f"Actor_{actor:02d}"
            fields = (emotion, intensity, statement, repetition, actor)
            written.append(write_video(folder / f"{ravdess_name(1, *fields)}.mp4", frames, fps=fps,
                                       crf=26, audio=wave, sample_rate=sample_rate, audio_bit_rate=64000))
            written.append(write_video(folder / f"{ravdess_name(2, *fields)}.mp4", frames, fps=fps,
                                       crf=26))
            written.append(write_wav(folder / f"{ravdess_name(3, *fields)}.wav", wave, sample_rate))
    return sorted(written)


def _ravdess_audio(emotion, intensity, pitch_factor, duration_s, sample_rate, rng):
    frequency = RAVDESS_TONE_HZ[emotion] * pitch_factor
    amplitude = 0.2 * intensity
    wave = tone(frequency, duration_s, sample_rate, amplitude=amplitude)
    if intensity == 2:
        wave += tone(2 * frequency, duration_s, sample_rate, amplitude=amplitude / 3)
    times = np.arange(len(wave)) / sample_rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(3, 8) * times + rng.uniform(0, 2 * np.pi))
    wave = wave * envelope + rng.normal(0.0, 0.05, len(wave))
    return np.clip(wave, -1, 1).astype(np.float32)


def _ravdess_frames(emotion, intensity, background, duration_s, fps, height, width, rng):
    hue = RAVDESS_HUE_DEG[emotion] + rng.uniform(-10, 10)
    square_rgb = hue_rgb(hue, saturation=0.5 * intensity, value=0.9)
    side = min(height, width) // 2
    top = (height - side) // 2 + rng.integers(-4, 5)
    left = (width - side) // 2 + rng.integers(-4, 5)
    first = solid_frame(height, width, (background,) * 3)
    first[top:top + side, left:left + side] = square_rgb
    texture = first + rng.normal(0.0, 12.0, first.shape)  # fixed per trial: cheap to encode
    frames = []
    for _ in range(round(duration_s * fps)):
        flicker = rng.normal(0.0, 3.0, first.shape)
        frames.append(np.clip(texture + flicker, 0, 255).round().astype(np.uint8))
    return frames


# ------------------------------------------------------------------------------------------ the CLI

KINDS = {"ravdess": make_ravdess, "aihub": make_aihub, "meld": make_meld, "kemdy20": make_kemdy20,
         "iemocap": make_iemocap, "mosei": make_mosei}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.fixtures",
        description="Write a tiny synthetic dataset in the exact on-disk layout of a real one.")
    parser.add_argument("kind", choices=sorted(KINDS), metavar="kind",
                        help="which dataset layout to write: " + ", ".join(sorted(KINDS)))
    parser.add_argument("out_dir", type=Path, help="folder to write into (created if missing)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same seed writes the same content (default 0)")
    args = parser.parse_args(argv)
    written = KINDS[args.kind](args.out_dir, seed=args.seed)
    total_bytes = sum(path.stat().st_size for path in written)
    print(f"{args.kind}: wrote {len(written)} files ({total_bytes / 1e6:.2f} MB) under {args.out_dir}")


if __name__ == "__main__":
    main()
