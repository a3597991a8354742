"""Real footage through the media readers and every --predict (highlight, FV2ES, AV): 24, 25, 29.97 and 30 fps,
256x256 to 1920x1080, portrait, odd sizes (641x359, which libx264 takes as yuv444p), AAC at 44.1 and 48 kHz, no
audio stream, audio shorter than the video, a variable-frame-rate phone clip and phone clips whose display matrix
turns landscape frames to portrait (a `rotate` tag of 90 and 270 degrees). Each clip is written here with PyAV;
each frame shows its index as 8 black/white cells, so a reader's choice of frame can be checked."""
import base64
import io
import json
import math
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchaudio
from PIL import Image

import train_av
import train_fv2es
import train_highlight
from common import InputError
from preprocess.fixtures.aihub import make_aihub
from preprocess.fixtures.fv2es import FILLER
from preprocess.fixtures.iemocap import CUE_WORDS, make_iemocap
from preprocess.fixtures.ravdess import make_ravdess
from preprocess.media import iter_audio, iter_frames, load_audio, probe, read_frames
from tiny_models import make_tiny_bert

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
NTSC = Fraction(30000, 1001)


# ------------------------------------------------------------------------------------------- footage

def picture(index, height, width):
    """The upright picture of frame `index`: a left-to-right grey ramp, a red block in the top-left corner and,
    below it, the index in 8 black/white cells (bit 0 first)."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = np.linspace(60, 180, width).astype(np.uint8)[None, :, None]
    block, cell = min(height, width) // 8, min(height, width) // 16
    rgb[:block, :block] = (230, 30, 30)
    for bit in range(8):
        rgb[block:block + cell, bit * cell:(bit + 1) * cell] = 255 if index >> bit & 1 else 0
    return rgb


def frame_index(rgb):
    height, width = rgb.shape[:2]
    block, cell = min(height, width) // 8, min(height, width) // 16
    return sum(int(rgb[block + cell // 2, bit * cell + cell // 2].mean() > 128) << bit for bit in range(8))


def write_footage(path, *, size, fps, seconds=None, times_s=None, rotation=0, mirror=False, audio_rate=None,
                  audio_seconds=None, preset="veryfast"):
    """An mp4 as a camera or phone writes it: h264 (yuv444p where a side is odd), frames at times_s (default: every
    1/fps for `seconds`; given: a variable frame rate), AAC mono at audio_rate for audio_seconds (default: as long
    as the video). size is (width, height) as shown; with rotation (a player's clockwise degrees, like a phone's
    `rotate` tag) and mirror the frames are stored turned back (and mirrored) and the display matrix says so."""
    width, height = size
    times_s = times_s if times_s is not None else [k / Fraction(fps) for k in range(round(seconds * Fraction(fps)))]
    stored_width, stored_height = (height, width) if rotation % 180 else (width, height)
    time_base = Fraction(1, 90000)
    wave = tone_bursts(audio_seconds or float(times_s[-1] + 1 / Fraction(fps)), audio_rate) if audio_rate else np.zeros(0, np.float32)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(100000))
        video.width, video.height = stored_width, stored_height
        video.pix_fmt = "yuv444p" if stored_width % 2 or stored_height % 2 else "yuv420p"
        video.codec_context.time_base = time_base
        video.options = {"crf": "23", "preset": preset}
        if rotation or mirror:
            # the matrix turns counter-clockwise, then mirrors; FFmpeg's CLI shows a frame turned by -rotation_get
            # degrees clockwise (fftools get_rotation), so rotate=90 is a matrix rotation of -90
            video.set_display_rotation(-rotation, hflip=mirror)
        if audio_rate:
            audio = container.add_stream("aac", rate=audio_rate)
            audio.layout = "mono"
        written = 0  # audio samples muxed: up to each frame's time, so the streams interleave as a camera's do

        def mux_audio(until):
            nonlocal written
            for start in range(written, min(until, len(wave)), 1024):
                block = av.AudioFrame.from_ndarray(wave[None, start:min(start + 1024, until)], format="fltp", layout="mono")
                block.sample_rate, block.pts, block.time_base = audio_rate, start, Fraction(1, audio_rate)
                container.mux(audio.encode(block))
            written = max(written, min(until, len(wave)))

        for index, time in enumerate(times_s):
            upright = picture(index, height, width)
            stored = np.rot90(upright[:, ::-1] if mirror else upright, rotation // 90)  # shown = turn(stored), then mirror
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(stored), format="rgb24")
            frame.pts, frame.time_base = round(time / time_base), time_base
            container.mux(video.encode(frame))
            mux_audio(round(float(time) * (audio_rate or 0)))
        container.mux(video.encode(None))
        if audio_rate:
            mux_audio(len(wave))
            container.mux(audio.encode(None))
    return path


def tone_bursts(seconds, sample_rate):
    """A 1-kHz tone in the first half of every second, silence in the second half: float32 (samples,)."""
    times = np.arange(round(seconds * sample_rate)) / sample_rate
    return np.where(times % 1 < 0.5, 0.4 * np.sin(2 * np.pi * 1000 * times), 0.0).astype(np.float32)


def phone_times(seconds_fast=2.0, seconds_slow=2.0, seed=0):
    """A phone's variable frame rate: ~30 fps with jitter, then ~12 fps (low light)."""
    rng = np.random.default_rng(seed)
    times, time = [], 0.0
    while time < seconds_fast + seconds_slow:
        times.append(round(time, 5))
        time += (1 / 30 if time < seconds_fast else 1 / 12) * rng.uniform(0.8, 1.2)
    return times


FOOTAGE = {  # name: write_footage options
    "24fps_256x256_aac44k1": dict(size=(256, 256), fps=24, seconds=3, audio_rate=44100),
    "25fps_854x480_aac48k": dict(size=(854, 480), fps=25, seconds=3, audio_rate=48000),
    "29.97fps_640x360": dict(size=(640, 360), fps=NTSC, seconds=4, audio_rate=48000),
    "30fps_1920x1080": dict(size=(1920, 1080), fps=30, seconds=1, audio_rate=48000, preset="ultrafast"),
    "portrait_360x640_aac44k1": dict(size=(360, 640), fps=30, seconds=3, audio_rate=44100),
    "odd_641x359": dict(size=(641, 359), fps=25, seconds=3, audio_rate=48000),
    "no_audio": dict(size=(320, 240), fps=30, seconds=3),
    "audio_shorter_than_video": dict(size=(320, 240), fps=30, seconds=4, audio_rate=48000, audio_seconds=1.5),
    "vfr_phone": dict(size=(480, 270), fps=30, times_s=phone_times(), audio_rate=48000),
    "phone_rotate90": dict(size=(360, 640), fps=30, seconds=3, rotation=90, audio_rate=48000),
    "phone_rotate270": dict(size=(360, 640), fps=30, seconds=3, rotation=270, audio_rate=48000),
}


def frame_times(options):
    if options.get("times_s") is not None:
        return options["times_s"]
    return [k / Fraction(options["fps"]) for k in range(round(options["seconds"] * Fraction(options["fps"])))]


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("footage")
    return {name: write_footage(folder / f"{name}.mp4", **options) for name, options in FOOTAGE.items()}


# ------------------------------------------------------------------------------------- media readers

@pytest.mark.parametrize("rotation, mirror", [(90, False), (180, False), (270, False), (0, True), (90, True)])
def test_frames_come_out_upright_as_a_player_shows_them(tmp_path, rotation, mirror):
    path = write_footage(tmp_path / "phone.mp4", size=(48, 96), fps=10, seconds=0.5, rotation=rotation, mirror=mirror)
    with av.open(str(path)) as container:
        stored = container.streams.video[0].codec_context
        assert (stored.width, stored.height) == ((96, 48) if rotation % 180 else (48, 96))
    info = probe(path)
    assert (info["width"], info["height"]) == (48, 96)
    assert info["rotation"] == (180 if mirror and not rotation else rotation)  # FFmpeg's angle of a mirror is 180
    _, frames = read_frames(path)
    assert frames.shape == (5, 96, 48, 3) and frames.flags.c_contiguous
    for index, rgb in enumerate(frames):
        assert np.abs(rgb.astype(int) - picture(index, 96, 48)).mean() < 4
        assert frame_index(rgb) == index
    _, small = read_frames(path, size=24)  # the shorter side of the upright picture
    assert small.shape == (5, 48, 24, 3) and small[0, :2, :2, 0].mean() > 180  # the red corner stays top-left
    _, exact = read_frames(path, size=(30, 20))
    assert exact.shape == (5, 30, 20, 3)
    _, square = read_frames(path, size=24, center_crop=True)
    assert square.shape == (5, 24, 24, 3)


@pytest.mark.parametrize("name", ["29.97fps_640x360", "vfr_phone"])
def test_the_frame_at_second_k_is_the_one_shown_at_k_within_one_frame(footage, name):
    """B-frames (libx264 veryfast), whose non-reference ones the sampler lets the decoder drop, at 30000/1001 fps
    and at a phone's variable rate (30 fps, then 12 fps)."""
    times = [float(t) for t in frame_times(FOOTAGE[name])]
    timestamps, frames = read_frames(footage[name], fps=1)
    assert timestamps == [float(k) for k in range(math.floor(times[-1]) + 1)]
    for second, rgb in zip(timestamps, frames):
        index = frame_index(rgb)
        shown = max(i for i, t in enumerate(times) if t <= second)  # on screen at that second
        assert index == next(i for i, t in enumerate(times) if t >= second - 1e-9)  # the sampler's rule
        assert index - shown <= 1 and times[index] - second < 0.1
    every = read_frames(footage[name])[0]  # without a rate: each frame at its own time
    assert every == pytest.approx(times, abs=1e-4)


def test_aac_at_44k1_resampled_to_16k_matches_the_source(footage):
    """The AAC stream of a 44.1-kHz clip, decoded and resampled, against torchaudio's resampling of the wave
    that went in: same length, no delay (the encoder's priming samples dropped), the same bursts."""
    path = footage["24fps_256x256_aac44k1"]
    audio = load_audio(path)
    reference = torchaudio.functional.resample(torch.from_numpy(tone_bursts(3.0, 44100)), 44100, 16000)
    assert audio.shape == reference.shape == (48000,)
    lags = range(-20, 21)
    errors = [float((audio[100 + lag:-100 + lag] - reference[100:-100]).abs().mean()) for lag in lags]
    assert lags[int(np.argmin(errors))] == 0 and min(errors) < 0.01
    on = (audio.abs() > 0.2).numpy()
    assert on[:8000].mean() > 0.6 and not on[8100:16000].any()  # 1 kHz in [0, 0.5) s, silence in [0.5, 1) s
    chunks = torch.cat([chunk for _, chunk in iter_audio(path, chunk_seconds=0.7)])
    assert float((chunks - audio).abs().max()) < 1e-5


# ------------------------------------------------------------------------------------------ --predict

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny trained models of the three systems, as their own tests train them (one epoch)."""
    from test_train_av import FAST as AV_FAST
    from test_train_fv2es import TINY as FV2ES_TINY
    from test_train_highlight import FAST as HIGHLIGHT_FAST
    root = tmp_path_factory.mktemp("checkpoints")
    make_aihub(root / "aihub", categories=("스포츠",), videos_per_category=3, seed=0)
    train_highlight.main(["--data", str(root / "aihub"), "-mod", "av", "--cache", str(root / "cache"), "--out", str(root / "highlight"),
                          *HIGHLIGHT_FAST, "--epochs", "1"])
    make_ravdess(root / "ravdess", emotions=(1, 5), seed=0)
    train_av.main(["--data", str(root / "ravdess"), "-mod", "av", "--cache", str(root / "cache"), "--out", str(root / "av"),
                   *AV_FAST, "--epochs", "1"])
    make_iemocap(root / "iemocap")
    text_model = make_tiny_bert(root / "tiny-bert", [*CUE_WORDS.values(), *FILLER, "hmm"])
    train_fv2es.main(["-lr=1e-3", "--datapath", str(root / "iemocap" / "processed"), "--dataset", "iemocap", "--text-model", str(text_model),
                      "--out", str(root / "fv2es"), "--cache", str(root / "cache"), *FV2ES_TINY, "-mod", "tav"])
    return {system: root / system / "model.pt" for system in ("highlight", "av", "fv2es")}


def one_line_error(call, path):
    with pytest.raises(InputError) as raised:
        call()
    message = str(raised.value)
    assert path.name in message and "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(FOOTAGE))
def test_every_predict_gives_a_result_or_one_line_on_real_footage(footage, checkpoints, name, tmp_path):
    path, options = footage[name], FOOTAGE[name]
    has_audio = bool(options.get("audio_rate"))
    times = [float(t) for t in frame_times(options)]
    # a second is scored when a frame is sampled in it or any audio falls in it (29.97 fps: 4.004 s of audio, 5 s)
    audio_seconds = options.get("audio_seconds") or times[-1] + float(1 / Fraction(options["fps"]))
    seconds = max(math.floor(times[-1]) + 1, math.ceil(round(audio_seconds, 6)))

    def highlight():  # every second is marked, so the reel holds the whole clip
        return train_highlight.main(["--predict", str(path), "--ckpt", str(checkpoints["highlight"]), "--out", str(tmp_path / "highlight"),
                                     "--threshold", "0", "--min-segment", "1"])

    def fv2es():
        return train_fv2es.main(["--predict", str(path), "--ckpt", str(checkpoints["fv2es"]), "--out", str(tmp_path / "fv2es"), "--window", "2"])

    def av_emotion():
        return train_av.main(["--predict", str(path), "--ckpt", str(checkpoints["av"])])

    if not has_audio:  # all three checkpoints use audio
        for call in (highlight, fv2es, av_emotion):
            assert "no audio stream" in one_line_error(call, path)
        return
    result = highlight()
    assert len(result["scores"]) == seconds and np.isfinite(result["scores"]).all()
    assert [(s["start"], s["end"]) for s in result["segments"]] == [(0, seconds - 1)]
    source, reel = probe(path), probe(tmp_path / "highlight" / "reel.mp4")
    assert reel["has_audio"] and reel["rotation"] == source["rotation"]  # a phone's reel plays upright too
    assert (reel["width"], reel["height"]) == (source["width"] // 2 * 2, source["height"] // 2 * 2)
    shown = [(time, frame_index(rgb)) for time, rgb in iter_frames(tmp_path / "highlight" / "reel.mp4")]  # upright, at its own time
    assert [index for _, index in shown] == list(range(len(times)))
    assert [time for time, _ in shown] == pytest.approx(times, abs=2e-3)

    segments = fv2es()["segments"]
    assert len(segments) == math.ceil(probe(path)["duration_s"] / 2 - 1e-6)
    first = re.search(r'src="data:image/jpeg;base64,([^"]+)"', (tmp_path / "fv2es" / "report.html").read_text()).group(1)
    thumbnail = np.asarray(Image.open(io.BytesIO(base64.b64decode(first))).convert("RGB"))  # frame 0, 72 px high
    assert thumbnail.shape[1] / 72 == pytest.approx(options["size"][0] / options["size"][1], abs=0.05)  # width / height as shown
    red, green, _ = thumbnail[1:4, 1:4].reshape(-1, 3).mean(0)
    assert red > 150 and green < 100  # upright: the red corner at the top left
    assert all(0 <= p <= 1 for segment in segments for p in segment["probabilities"].values())
    [prediction] = av_emotion()
    assert prediction["prediction"] in train_av.EMOTIONS and sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_the_predict_command_line_prints_results_then_one_error_line(footage, checkpoints):
    clips = [footage["phone_rotate90"], footage["vfr_phone"], footage["no_audio"]]
    result = subprocess.run([sys.executable, "train_av.py", "--predict", *map(str, clips), "--ckpt", str(checkpoints["av"])],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == list(map(str, clips[:2]))
    assert result.stderr.strip().splitlines() == [f"error: {clips[2]}: no audio stream"]
