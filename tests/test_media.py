"""The frame sampler, the audio loader and their errors, on tiny clips written on the fly."""
import math
import threading
import tracemalloc

import av
import numpy as np
import pytest
import torch

from common import InputError
from preprocess.fixtures.writers import solid_frame, tone, write_video, write_wav
from preprocess.media import MediaError, decoded_ahead, iter_audio, iter_frames, load_audio, probe, read_frames

CLIP_FPS = 10
CLIP_FRAMES = 40  # 4 s


def grey_level(index):
    return 16 + 6 * index  # frame index -> grey level, 16..250


def frame_index(frame):
    return round((float(frame.mean()) - 16) / 6)


@pytest.fixture(scope="module")
def counting_clip(tmp_path_factory):
    """4-s 10-fps 64x48 clip whose frame k is flat grey level 16 + 6k, with a 440 Hz tone at 48 kHz."""
    path = tmp_path_factory.mktemp("media") / "counting.mp4"
    frames = (solid_frame(48, 64, (grey_level(k),) * 3) for k in range(CLIP_FRAMES))
    write_video(path, frames, fps=CLIP_FPS, audio=tone(440, CLIP_FRAMES / CLIP_FPS, 48000), sample_rate=48000)
    return path


def dominant_hz(wave, sample_rate):
    spectrum = np.abs(np.fft.rfft(np.asarray(wave, dtype=np.float64)))
    return np.argmax(spectrum) * sample_rate / len(wave)


# --------------------------------------------------------------------------------------------- frames

def test_one_frame_per_second_is_the_first_frame_at_or_after_each_second(counting_clip):
    timestamps, frames = read_frames(counting_clip, fps=1)
    assert timestamps == [0.0, 1.0, 2.0, 3.0]
    assert [frame_index(frame) for frame in frames] == [0, 10, 20, 30]
    assert frames.dtype == np.uint8 and frames.shape == (4, 48, 64, 3)


@pytest.mark.parametrize("options, step_s", [({"interval_ms": 250}, 0.25), ({"fps": 3}, 1 / 3)])
def test_sampling_picks_the_first_frame_whose_pts_reaches_each_target(counting_clip, options, step_s):
    samples = list(iter_frames(counting_clip, **options))
    targets = [k * step_s for k in range(len(samples))]
    assert [timestamp for timestamp, _ in samples] == pytest.approx(targets)
    assert targets[-1] <= (CLIP_FRAMES - 1) / CLIP_FPS < targets[-1] + step_s  # no target past the end
    expected = [math.ceil(round(target * CLIP_FPS, 9)) for target in targets]
    assert [frame_index(frame) for _, frame in samples] == expected


def test_without_a_rate_every_frame_comes_with_its_own_time(counting_clip):
    samples = list(iter_frames(counting_clip))
    assert len(samples) == CLIP_FRAMES
    own_times = [k / CLIP_FPS for k in range(CLIP_FRAMES)]
    assert [timestamp for timestamp, _ in samples] == pytest.approx(own_times)
    assert [frame_index(frame) for _, frame in samples] == list(range(CLIP_FRAMES))



@pytest.fixture(scope="module")
def b_frame_clip(tmp_path_factory):
    """3-s 30-fps 96x64 clip of moving noise texture: libx264 veryfast gives it B-frames, most of them non-reference."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (64, 96 + 3 * 90, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("media") / "b_frames.mp4"
    write_video(path, (np.ascontiguousarray(texture[:, 3 * k:3 * k + 96]) for k in range(90)), fps=30, crf=30)
    return path


@pytest.mark.parametrize("options", [{"fps": 1}, {"fps": 6}, {"interval_ms": 700}])
def test_skipping_undisplayed_non_reference_frames_changes_no_sample(b_frame_clip, options):
    """iter_frames lets the decoder drop non-reference frames that lie before the next target; the samples must be
    exactly those of decoding every frame and taking the first one whose pts reaches each target."""
    with av.open(str(b_frame_clip)) as container:
        every_frame = [(frame.pts, frame.pict_type == av.video.frame.PictureType.B, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
        time_base = container.streams.video[0].time_base
    assert sum(is_b for _, is_b, _ in every_frame) > 20  # the clip exercises the skipping
    step = 1 / options["fps"] if "fps" in options else options["interval_ms"] / 1000
    samples = list(iter_frames(b_frame_clip, **options))
    assert len(samples) == math.floor(round((len(every_frame) - 1) / 30 / step, 9)) + 1
    for index, (timestamp, rgb) in enumerate(samples):
        reference = next(image for pts, _, image in every_frame if pts * time_base >= index * step - 1e-9)
        assert timestamp == pytest.approx(index * step)
        np.testing.assert_array_equal(rgb, reference)

def test_a_low_fps_video_serves_one_frame_to_several_targets(tmp_path):
    path = tmp_path / "slow.mp4"
    frames = (solid_frame(48, 64, (grey_level(k),) * 3) for k in range(4))
    write_video(path, frames, fps=2)  # frames at 0, 0.5, 1.0, 1.5 s
    samples = list(iter_frames(path, fps=5))
    assert [timestamp for timestamp, _ in samples] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4])
    assert [frame_index(frame) for _, frame in samples] == [0, 1, 1, 2, 2, 2, 3, 3]
    assert samples[1][1] is not samples[2][1]  # repeats are copies: callers may edit them in place


def test_resize_keeps_the_aspect_and_center_crop_cuts_the_middle_square(tmp_path):
    frame = solid_frame(32, 64, (0, 0, 255))
    frame[:, 16:48] = (255, 0, 0)  # red middle square, blue sides
    path = tmp_path / "sides.mp4"
    write_video(path, [frame] * 3, fps=10)

    _, resized = read_frames(path, size=16)
    assert resized.shape == (3, 16, 32, 3)
    _, exact = read_frames(path, size=(20, 30))
    assert exact.shape == (3, 20, 30, 3)
    _, cropped = read_frames(path, size=32, center_crop=True)
    assert cropped.shape == (3, 32, 32, 3)
    inner = cropped[:, :, 2:-2].reshape(-1, 3).mean(axis=0)  # away from chroma-subsampled edges
    assert inner[0] > 200 and inner[1] < 40 and inner[2] < 40


def test_frames_are_rgb_not_bgr(tmp_path):
    path = tmp_path / "red.mp4"
    write_video(path, [solid_frame(48, 64, (230, 20, 20))] * 3, fps=10)
    _, frames = read_frames(path, size=24, center_crop=True)
    red, green, blue = frames.reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 50 and blue < 50


def test_sampler_memory_does_not_grow_with_video_length(tmp_path):
    def peak_bytes(seconds):
        path = tmp_path / f"noise_{seconds}.mp4"
        rng = np.random.default_rng(seconds)
        write_video(path, (rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(seconds * 10)),
                    fps=10, preset="ultrafast")
        tracemalloc.start()
        for _ in iter_frames(path, fps=2, size=32):
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    short_peak, long_peak = peak_bytes(2), peak_bytes(40)
    assert long_peak < 1.5 * short_peak + 64_000, (short_peak, long_peak)


# ---------------------------------------------------------------------------------------------- audio

WAV_VARIANTS = {  # name: (native rate, channels, soundfile subtype)
    "8bit": (16000, 1, "PCM_U8"), "16bit": (16000, 1, "PCM_16"), "24bit": (16000, 1, "PCM_24"),
    "float": (16000, 1, "FLOAT"), "stereo": (16000, 2, "PCM_16"), "48k": (48000, 1, "PCM_16"),
    "8k": (8000, 1, "PCM_16"), "44k1_stereo_24bit": (44100, 2, "PCM_24"),
}


@pytest.mark.parametrize("variant", sorted(WAV_VARIANTS))
def test_load_audio_turns_any_wav_into_16k_mono_float32(tmp_path, variant):
    native_rate, channels, subtype = WAV_VARIANTS[variant]
    wave = tone(440, 1.0, native_rate, amplitude=0.4)
    if channels == 2:
        wave = np.stack([wave, np.zeros_like(wave)], axis=1)  # mono mix = mean: amplitude 0.2
    path = write_wav(tmp_path / f"{variant}.wav", wave, native_rate, subtype=subtype)

    audio = load_audio(path)
    assert audio.dtype == torch.float32 and audio.shape == (16000,)
    assert dominant_hz(audio, 16000) == pytest.approx(440, abs=1)
    expected_amplitude = 0.4 / channels
    assert float(audio[1000:-1000].abs().max()) == pytest.approx(expected_amplitude, rel=0.05)


@pytest.mark.parametrize("native_rate, channels", [(48000, 1), (44100, 2)])
def test_load_audio_reads_the_aac_stream_of_an_mp4(tmp_path, native_rate, channels):
    wave = tone(440, 2.0, native_rate, amplitude=0.4)
    if channels == 2:
        wave = np.stack([wave, wave], axis=1)
    path = tmp_path / "av.mp4"
    write_video(path, [solid_frame(48, 64, (90, 90, 90))] * 20, fps=10, audio=wave, sample_rate=native_rate)

    audio = load_audio(path)
    assert audio.dtype == torch.float32 and audio.shape == (32000,)  # encoder padding trimmed
    assert dominant_hz(audio, 16000) == pytest.approx(440, abs=0.5)
    assert float(audio[2000:-2000].abs().max()) == pytest.approx(0.4, rel=0.1)


@pytest.mark.parametrize("source", ["wav_48k", "wav_44k1", "mp4_aac_48k"])
def test_iter_audio_chunks_concatenate_to_load_audio(tmp_path, source):
    rng = np.random.default_rng(0)
    if source == "mp4_aac_48k":
        path = tmp_path / "av.mp4"
        wave = tone(523, 3.3, 48000, noise=0.05, rng=rng)
        write_video(path, [solid_frame(48, 64, (90, 90, 90))] * 33, fps=10, audio=wave, sample_rate=48000)
    else:
        native_rate = 48000 if source == "wav_48k" else 44100
        path = write_wav(tmp_path / "long.wav", tone(523, 3.3, native_rate, noise=0.05, rng=rng), native_rate)

    whole = load_audio(path)
    chunks = list(iter_audio(path, chunk_seconds=0.5))
    starts = [start for start, _ in chunks]
    assert len(chunks) == 7 and starts == pytest.approx([0.5 * k for k in range(7)])
    assert all(len(chunk) == 8000 for _, chunk in chunks[:-1])
    joined = torch.cat([chunk for _, chunk in chunks])
    assert joined.shape == whole.shape
    assert float((joined - whole).abs().max()) < 1e-5  # (torch.testing's first call costs 1.5 s)


def test_probe_reports_stream_metadata(counting_clip, tmp_path):
    info = probe(counting_clip)
    assert info["has_video"] and info["has_audio"]
    assert (info["width"], info["height"], info["fps"]) == (64, 48, 10.0)
    assert info["frame_count"] == CLIP_FRAMES
    assert info["audio_sample_rate"] == 48000
    assert info["duration_s"] == pytest.approx(4.0, abs=0.05)

    wav_info = probe(write_wav(tmp_path / "a.wav", tone(440, 0.5, 8000), 8000))
    assert not wav_info["has_video"] and wav_info["has_audio"] and wav_info["audio_sample_rate"] == 8000
    assert wav_info["duration_s"] == pytest.approx(0.5) and wav_info["fps"] is None


# --------------------------------------------------------------------------------------------- errors

def _bad_files(directory):
    """name -> (path, what a reader of that file should report)."""
    frames = [solid_frame(48, 64, (90, 90, 90))] * 20
    silent = write_video(directory / "silent.mp4", frames, fps=10)
    complete = write_video(directory / "complete.mp4", frames, fps=10, audio=tone(440, 2, 16000))
    streamable = write_video(directory / "streamable.mp4", frames, fps=10, audio=tone(440, 2, 16000),
                             faststart=True)
    (directory / "empty.mp4").write_bytes(b"")
    (directory / "empty.wav").write_bytes(b"")
    (directory / "text.mp4").write_text("not a video\nat all\n")
    (directory / "text.wav").write_text("not a sound\nat all\n")
    (directory / "cut.mp4").write_bytes(complete.read_bytes()[:complete.stat().st_size // 2])  # index at end
    cut_at = streamable.stat().st_size * 2 // 3  # index at the start, data cut
    (directory / "cut_streamable.mp4").write_bytes(streamable.read_bytes()[:cut_at])
    audio_only = write_wav(directory / "voice.wav", tone(440, 0.5, 16000), 16000)
    return {
        "missing": (directory / "missing.mp4", "no such file"),
        "empty_mp4": (directory / "empty.mp4", "empty"),
        "empty_wav": (directory / "empty.wav", "empty"),
        "text_mp4": (directory / "text.mp4", "not a readable"),
        "text_wav": (directory / "text.wav", "not a readable"),
        "cut_mp4": (directory / "cut.mp4", "not a readable"),
        "cut_streamable_mp4": (directory / "cut_streamable.mp4", "truncated"),
        "no_audio": (silent, "no audio stream"),
        "no_video": (audio_only, "no video stream"),
    }


READERS = {
    "probe": probe,
    "read_frames": lambda path: read_frames(path, fps=1),
    "load_audio": load_audio,
    "iter_audio": lambda path: list(iter_audio(path)),
}
EXPECTED_FAILURES = [  # (bad file, reader): every reader that cannot do its job must say so
    (bad, reader) for bad in ["missing", "empty_mp4", "empty_wav", "text_mp4", "text_wav", "cut_mp4",
                              "cut_streamable_mp4"] for reader in READERS
] + [("no_audio", "load_audio"), ("no_audio", "iter_audio"), ("no_video", "read_frames")]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return _bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("bad, reader", EXPECTED_FAILURES)
def test_every_bad_input_raises_one_line_media_error_naming_the_file(bad_files, bad, reader):
    path, problem = bad_files[bad]
    with pytest.raises(MediaError) as raised:
        READERS[reader](path)
    message = str(raised.value)
    assert isinstance(raised.value, InputError)
    assert path.name in message and problem in message
    assert "\n" not in message


def test_readers_that_need_only_what_is_there_still_work(bad_files):
    assert probe(bad_files["no_audio"][0])["has_audio"] is False
    assert len(read_frames(bad_files["no_audio"][0], fps=1)[0]) == 2
    assert load_audio(bad_files["no_video"][0]).shape == (8000,)


def test_decoded_ahead_keeps_order_raises_the_generators_error_and_stops_its_thread_when_closed():
    closed = []

    def counting(stop_with=None):
        try:
            for index in range(100):
                if index == 3 and stop_with:
                    raise stop_with
                yield index
        finally:
            closed.append(threading.current_thread().name)

    assert list(decoded_ahead(counting(), depth=2)) == list(range(100))
    received = []
    with pytest.raises(MediaError, match="clip.mp4: truncated"):
        for item in decoded_ahead(counting(MediaError("clip.mp4", "truncated")), depth=2):
            received.append(item)
    assert received == [0, 1, 2]
    early = decoded_ahead(counting(), depth=2)
    assert [next(early), next(early)] == [0, 1]
    early.close()
    assert closed == ["decoded_ahead"] * 3  # each generator closed, in the worker thread
    assert not any(thread.name == "decoded_ahead" for thread in threading.enumerate())
