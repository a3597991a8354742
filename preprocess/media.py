"""Media I/O: the one frame sampler and the one audio loader every script uses.

Video is decoded with PyAV, sequentially and threaded, and sampled by presentation timestamp: for the
targets 0, step, 2*step, ... the first decoded frame whose pts >= target is kept, converted to RGB
uint8 (and resized by swscale), turned upright as players show it (the display matrix: phones store a portrait clip
as landscape frames plus a quarter turn) and yielded; the others are never converted. Nothing accumulates, so
memory does not depend on the video's length. Times are seconds from the stream's first timestamp, so a variable
frame rate (phones) is sampled by when each frame is shown.

Audio is read by soundfile (.wav, .flac) or by PyAV (the audio stream of anything else), mixed to
mono (mean of the channels) and resampled with torchaudio to 16 kHz float32. `load_audio` reads a
whole file; `iter_audio` streams it in chunks whose concatenation equals `load_audio`.

Every failure (missing, empty, truncated or non-media file, missing stream, NaN/inf samples) raises `MediaError`
with one line that names the file.
"""
import functools
import math
import os
import queue
import threading
from fractions import Fraction

import av
import numpy as np
import soundfile
import torch
import torchaudio.transforms

from common import InputError

SOUNDFILE_SUFFIXES = (".wav", ".flac")
# a stream that stops this much before the duration its container declares is a truncated file
TRUNCATION_TOLERANCE_S = 1.0


class MediaError(InputError):
    """A media file that cannot be read as asked; the message is `<path>: <problem>` on one line."""

    def __init__(self, path, problem):
        super().__init__(_one_line(f"{os.fspath(path)}: {problem}"))


def _one_line(text):
    return " ".join(str(text).split())


def _ffmpeg_reason(error):
    return getattr(error, "strerror", None) or str(error)


def _check_file(path):
    if not os.path.exists(path):
        raise MediaError(path, "no such file")
    if os.path.isdir(path):
        raise MediaError(path, "is a directory, not a media file")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")


def _open_container(path):
    _check_file(path)
    try:
        container = av.open(os.fspath(path))
    except av.FFmpegError as error:
        raise MediaError(path, f"not a readable media file ({_ffmpeg_reason(error)})") from None
    file_size = os.path.getsize(path)
    for stream in (*container.streams.video, *container.streams.audio):
        if stream.codec_context is None:  # a damaged header can name no codec we can decode
            problem = f"{stream.type} stream {stream.index} has no decodable codec"
            container.close()  # (touching a stream of a closed container crashes PyAV)
            raise MediaError(path, problem)
    for stream in container.streams:
        entries = stream.index_entries  # mp4/mov know where every packet lies: check the last one
        if not len(entries):
            continue
        last = entries[len(entries) - 1]  # IndexEntries has no negative indexing (it crashes)
        if last.pos + last.size > file_size:
            container.close()
            raise MediaError(path, f"truncated: {file_size} bytes but its index reaches byte "
                                   f"{last.pos + last.size}")
    return container


def _video_stream(container, path):
    if not container.streams.video:
        raise MediaError(path, "no video stream")
    return container.streams.video[0]


def _audio_stream(container, path):
    if not container.streams.audio:
        raise MediaError(path, "no audio stream")
    return container.streams.audio[0]


# ---------------------------------------------------------------------------------------------- probe

def probe(path):
    """Stream metadata: duration_s, has_video, has_audio, fps, width, height, rotation, audio_sample_rate, frame_count
    (the container's count, else duration x fps; an estimate). width x height is the picture as players show it and
    iter_frames yields it: after the display matrix's turn, whose clockwise degrees (0, 90, 180, 270; a phone's
    `rotate` tag) are rotation. Only the first video frame is decoded, for that matrix. Fields of a missing stream
    are None."""
    with _open_container(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        duration_s = container.duration / av.time_base if container.duration is not None else None
        if duration_s is None:
            stream_durations = [float(s.duration * s.time_base) for s in (video, audio)
                                if s is not None and s.duration is not None]
            duration_s = max(stream_durations, default=None)
        info = {"duration_s": duration_s, "has_video": video is not None, "has_audio": audio is not None,
                "fps": None, "width": None, "height": None, "rotation": None, "frame_count": None,
                "audio_sample_rate": audio.codec_context.sample_rate if audio is not None else None}
        if video is not None:
            rate = video.average_rate or video.guessed_rate
            info["fps"] = float(rate) if rate else None
            matrix = _first_display_matrix(container, video)
            info["width"], info["height"] = video.codec_context.width, video.codec_context.height
            if _orientation(matrix)[0]:
                info["width"], info["height"] = info["height"], info["width"]
            info["rotation"] = _clockwise_degrees(matrix)
            if video.frames:
                info["frame_count"] = video.frames
            elif duration_s is not None and info["fps"]:
                info["frame_count"] = round(duration_s * info["fps"])
        return info


# --------------------------------------------------------------------------------------- orientation

def display_matrix(frame):
    """The display matrix of a decoded video frame as 9 ints in FFmpeg's layout (a, b, u, c, d, v, x, y, w; a-d in
    16.16 fixed point), or None without one. Players show pixel (x, y) at (a x + c y, b x + d y)."""
    side_data = frame.side_data.get("DISPLAYMATRIX")
    if side_data is None or side_data.buffer_size < 36:
        return None
    return tuple(int(value) for value in np.frombuffer(bytes(side_data), np.int32, count=9))


def _orientation(matrix):
    """(swap, flip_rows, flip_columns) that turn a stored picture into the one shown: the nearest quarter turn of
    the matrix, with its mirroring (recorders write only quarter turns; a player could turn by any angle)."""
    if matrix is None:
        return False, False, False
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    if abs(a) + abs(d) >= abs(b) + abs(c):  # shown at (a x, d y)
        return False, d < 0, a < 0
    return True, b < 0, c < 0  # shown at (c y, b x): rows and columns swap


def _clockwise_degrees(matrix):
    """The matrix's turn as a player's clockwise degrees, 0/90/180/270 (FFmpeg's -av_display_rotation_get)."""
    if matrix is None:
        return 0
    return round(math.degrees(math.atan2(matrix[1], matrix[0])) / 90) % 4 * 90


def _upright(rgb, orientation):
    """rgb (H, W, 3) as stored -> as shown (a view; (W, H, 3) after a quarter turn)."""
    swap, flip_rows, flip_columns = orientation
    if swap:
        rgb = rgb.transpose(1, 0, 2)
    return rgb[::-1 if flip_rows else 1, ::-1 if flip_columns else 1]


FIRST_FRAME_PACKETS = 64  # probe looks this far for a decodable frame; a stream that yields none by then is left to the readers


def _first_display_matrix(container, stream):
    try:
        for count, packet in enumerate(container.demux(stream)):
            for frame in packet.decode():
                return display_matrix(frame)
            if count == FIRST_FRAME_PACKETS:
                break
    except av.FFmpegError:  # probe reports what the headers say; the readers report damage
        pass
    return None


# -------------------------------------------------------------------------------------------- frames

def _sampling_step(fps, interval_ms):
    """Seconds between targets as an exact fraction, or None to keep every frame."""
    if fps is not None and interval_ms is not None:
        raise ValueError("give fps or interval_ms, not both")
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        return 1 / Fraction(fps).limit_denominator(1_000_000)
    if interval_ms is not None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        return Fraction(interval_ms).limit_denominator(1_000_000) / 1000
    return None


def _output_geometry(width, height, size, center_crop):
    """(resize_width, resize_height, crop) where crop is (top, left, side) or None."""
    if size is None:
        if center_crop:
            raise ValueError("center_crop needs size")
        return width, height, None
    if isinstance(size, int):
        scale = size / min(width, height)
        resize_width = max(size, round(width * scale))
        resize_height = max(size, round(height * scale))
        if not center_crop:
            return resize_width, resize_height, None
        return resize_width, resize_height, ((resize_height - size) // 2, (resize_width - size) // 2, size)
    resize_height, resize_width = size
    if center_crop:
        raise ValueError("center_crop needs an int size (the shorter side), not (height, width)")
    return resize_width, resize_height, None


# h264 frame threading (thread_type AUTO) pays off on many cores; on few cores PyAV's default (slice threading, one
# thread for single-slice h264) decodes faster and gains far more from skipped frames (bench/video.py measures both)
FRAME_THREADS_MIN_CORES = 4


def use_decoder_threads(stream):
    """Frame-threaded decoding of this video stream where the machine has the cores for it."""
    if (os.cpu_count() or 1) >= FRAME_THREADS_MIN_CORES:
        stream.thread_type = "AUTO"


def decoded_ahead(items, depth=8):
    """Iterate `items` (a frame or packet generator) in a background thread, up to `depth` items ahead, so that
    decoding overlaps what the caller does with each item (PyAV's codec calls and torch release the GIL). The
    generator's exceptions are raised here, in order; closing this iterator early closes the generator too."""
    handoff, stop = queue.Queue(maxsize=depth), threading.Event()

    def offer(message):
        while not stop.is_set():
            try:
                handoff.put(message, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in items:
                if not offer(("item", item)):
                    break
            else:
                offer(("end", None))
        except BaseException as error:  # handed to the consumer, raised there
            offer(("error", error))
        finally:
            getattr(items, "close", lambda: None)()  # in this thread, where the generator runs

    worker = threading.Thread(target=produce, name="decoded_ahead", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join()


def iter_frames(path, *, fps=None, interval_ms=None, size=None, center_crop=False, threads=True):
    """Yield (timestamp_s, frame) with frame an RGB uint8 array (H, W, 3).

    With fps or interval_ms, timestamp_s runs over the targets 0, step, 2*step, ... and frame is the
    first decoded frame whose pts >= target (a frame serves several targets when the video's own
    rate is lower; those repeats are copies): within one frame of the frame shown at the target, at any
    (variable) frame rate. Targets after the last frame are not yielded. With neither, every frame is yielded
    with its own time. Frames come upright, as players show them (the stream's display matrix applied: probe's
    width x height). size: int -> shorter side = size, aspect kept (center_crop=True then cuts the central
    size x size square); (height, width) -> exactly that, of the upright picture.
    """
    step = _sampling_step(fps, interval_ms)
    container = _open_container(path)
    with container:
        stream = _video_stream(container, path)
        if threads:
            use_decoder_threads(stream)
        for other in container.streams:
            if other is not stream:
                other.discard = av.stream.Discard.all  # the demuxer drops their packets early
        geometry = None  # (orientation, stored-orientation resize (width, height), crop), from the first frame
        time_base = stream.time_base
        frame_rate = stream.average_rate or stream.guessed_rate or 25
        frame_ticks = max(1, round(1 / (frame_rate * time_base)))  # one frame period in pts units

        def to_rgb(frame):
            nonlocal geometry
            if geometry is None:  # the first frame carries the stream's display matrix
                orientation = _orientation(display_matrix(frame))
                shown = (frame.height, frame.width) if orientation[0] else (frame.width, frame.height)
                resize_width, resize_height, crop = _output_geometry(*shown, size, center_crop)
                stored = (resize_height, resize_width) if orientation[0] else (resize_width, resize_height)
                geometry = orientation, stored, crop
            orientation, (stored_width, stored_height), crop = geometry
            rgb = _upright(frame.reformat(width=stored_width, height=stored_height, format="rgb24").to_ndarray(), orientation)
            if crop is not None:
                top, left, side = crop
                rgb = rgb[top:top + side, left:left + side]
            return np.ascontiguousarray(rgb)

        def seconds(pts):
            return float((pts - start_pts) * time_base)

        def sampled(frame):
            nonlocal start_pts, target_pts, last_pts, target_index
            pts = frame.pts
            if pts is None:  # rare (raw streams): assume a constant rate
                pts = 0 if last_pts is None else last_pts + frame_ticks
            if start_pts is None:
                start_pts = target_pts = pts
            last_pts = pts
            if step is None:
                yield seconds(pts), to_rgb(frame)
                return
            rgb = None
            while pts >= target_pts:  # one integer comparison: target_pts is the first pts at or after the target
                rgb = to_rgb(frame) if rgb is None else rgb.copy()
                yield float(target_index * step), rgb
                target_index += 1
                target_pts = start_pts + math.ceil(target_index * step / time_base)

        start_pts = target_pts = stream.start_time
        last_pts = None
        target_index = 0
        skipping = False
        try:
            for packet in container.demux(stream):
                # a frame shown before the pending target is never sampled (targets only grow), so when it is a
                # non-reference frame (most B-frames) the decoder may drop it: the same frames come out, faster
                skip = step is not None and target_pts is not None and packet.pts is not None and packet.pts < target_pts
                if skip != skipping:
                    stream.codec_context.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
                for frame in packet.decode():
                    yield from sampled(frame)
        except av.FFmpegError as error:
            reached = seconds(last_pts) if last_pts is not None else 0.0
            raise MediaError(path, f"truncated or corrupt video near {reached:.2f} s "
                                   f"({_ffmpeg_reason(error)})") from None
        if last_pts is None:
            raise MediaError(path, "no video frames decoded")
        declared_s = float(stream.duration * time_base) if stream.duration else None
        ended_early = declared_s is not None and declared_s - seconds(last_pts) > TRUNCATION_TOLERANCE_S
        if ended_early:
            raise MediaError(path, f"truncated: video ends at {seconds(last_pts):.2f} s of the "
                                   f"{declared_s:.2f} s its container declares")


def read_frames(path, **sampler_options):
    """For short clips: (timestamps list, uint8 array (N, H, W, 3)) from iter_frames(path, ...)."""
    timestamps, frames = [], []
    for timestamp, frame in iter_frames(path, **sampler_options):
        timestamps.append(timestamp)
        frames.append(frame)
    if not frames:
        raise MediaError(path, "no video frames decoded")
    return timestamps, np.stack(frames)


# --------------------------------------------------------------------------------------------- audio

_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def _frame_channels(frame):
    """(channels, samples) float32 from a decoded AudioFrame of any sample format."""
    samples = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: (1, samples * channels), interleaved
        samples = samples.reshape(-1, frame.layout.nb_channels).T
    name = frame.format.name.rstrip("p")
    if name == "u8":
        return (samples.astype(np.float32) - 128.0) / 128.0
    if name in _INT_SCALE:
        return (samples / _INT_SCALE[name]).astype(np.float32)
    return samples.astype(np.float32, copy=False)


def _check_finite(path, samples, start_s):
    """Float files can hold NaN or inf, which would poison every feature computed from them."""
    if not np.isfinite(samples).all():
        raise MediaError(path, f"NaN or infinite samples near {start_s:.2f} s")


def _native_mono_blocks(path, block_frames=65536):
    """The decoding core: (native_rate, blocks) with blocks an iterator of mono float32 numpy arrays."""
    _check_file(path)
    if os.fspath(path).lower().endswith(SOUNDFILE_SUFFIXES):
        try:
            sound = soundfile.SoundFile(os.fspath(path))
        except (soundfile.LibsndfileError, RuntimeError) as error:
            raise MediaError(path, f"not a readable audio file ({error})") from None
        if sound.frames == 0:
            sound.close()
            raise MediaError(path, "no audio samples")

        def soundfile_blocks():
            with sound:
                for index, block in enumerate(sound.blocks(blocksize=block_frames, dtype="float32", always_2d=True)):
                    mono = block.mean(axis=1, dtype=np.float32)  # block: (samples, channels)
                    _check_finite(path, mono, index * block_frames / sound.samplerate)
                    yield mono

        return sound.samplerate, soundfile_blocks()

    container = _open_container(path)
    try:
        stream = _audio_stream(container, path)
    except MediaError:
        container.close()
        raise
    for other in container.streams:
        if other is not stream:
            other.discard = av.stream.Discard.all
    native_rate = stream.codec_context.sample_rate

    # the encoder pads its last frame; the container's stream duration says where the audio ends
    total = (round(stream.duration * stream.time_base * native_rate)
             if stream.duration is not None else None)

    def pyav_blocks():
        decoded = 0
        with container:
            try:
                for frame in container.decode(stream):
                    mono = _frame_channels(frame).mean(axis=0, dtype=np.float32)  # (samples,)
                    _check_finite(path, mono, decoded / native_rate)
                    if total is not None:
                        mono = mono[:max(0, total - decoded)]
                    decoded += len(mono)
                    if len(mono):
                        yield mono
            except av.FFmpegError as error:
                raise MediaError(path, f"truncated or corrupt audio near {decoded / native_rate:.2f} s "
                                       f"({_ffmpeg_reason(error)})") from None
            if total is not None and total - decoded > TRUNCATION_TOLERANCE_S * native_rate:
                raise MediaError(path, f"truncated: audio ends at {decoded / native_rate:.2f} s of the "
                                       f"{total / native_rate:.2f} s its container declares")

    return native_rate, pyav_blocks()


MAX_KERNEL_VALUES = 20_000_000  # torchaudio's sinc kernel is (new / g) x (native / g + 2 width) floats, g = gcd


def _check_rate(path, native_rate, sample_rate):
    """A header's sample rate that no recording has, or one whose resampling kernel alone would take gigabytes
    (a damaged header; e.g. 44101 Hz -> 16 kHz: 16000 x 44135 floats), is refused before anything is allocated."""
    if not 1000 <= native_rate <= 768000:
        raise MediaError(path, f"sample rate {native_rate} Hz in its header is not an audio rate (1000-768000 Hz)")
    divisor = math.gcd(native_rate, sample_rate)
    if (sample_rate // divisor) * (native_rate // divisor) > MAX_KERNEL_VALUES:
        raise MediaError(path, f"sample rate {native_rate} Hz cannot be resampled to {sample_rate} Hz in bounded memory; "
                               f"convert the file to a standard rate such as 44100 or 48000 Hz")


@functools.lru_cache(maxsize=8)
def _resampler(native_rate, sample_rate):
    """torchaudio's default sinc resampler with its kernel built once (as functional.resample computes)."""
    return torchaudio.transforms.Resample(native_rate, sample_rate)


def _resample(wave, native_rate, sample_rate):
    if native_rate == sample_rate:
        return wave
    with torch.no_grad():
        return _resampler(native_rate, sample_rate)(wave)


def load_audio(path, *, sample_rate=16000):
    """The whole audio of a file (wav/flac via soundfile, else the first audio stream via PyAV) as
    mono float32 torch tensor (samples,) at sample_rate."""
    native_rate, blocks = _native_mono_blocks(path)
    _check_rate(path, native_rate, sample_rate)
    parts = list(blocks)
    if not parts or sum(len(part) for part in parts) == 0:
        raise MediaError(path, "no audio samples")
    return _resample(torch.from_numpy(np.concatenate(parts)), native_rate, sample_rate)


def iter_audio(path, *, chunk_seconds=60.0, sample_rate=16000):
    """Stream the audio as (start_s, chunk) with chunk a mono float32 tensor (samples,) at sample_rate;
    the chunks' concatenation equals load_audio(path) (to float rounding). Chunks are about
    chunk_seconds long, cut on native samples that map to whole output samples, and each is resampled
    with native-rate context on both sides (then trimmed), so memory stays flat for any length."""
    native_rate, blocks = _native_mono_blocks(path)
    _check_rate(path, native_rate, sample_rate)
    divisor = math.gcd(native_rate, sample_rate)
    native_period = native_rate // divisor  # native samples that make exactly output_period outputs
    output_period = sample_rate // divisor
    chunk_native = max(1, round(chunk_seconds * native_rate) // native_period) * native_period
    # native samples torchaudio's sinc kernel (lowpass_filter_width 6, rolloff 0.99) reaches on each
    # side of an output; the context is that plus a margin, in whole periods to keep the phase
    kernel_reach = math.ceil(6 * native_period / (0.99 * min(native_period, output_period)))
    context = math.ceil((kernel_reach + 64) / native_period) * native_period

    buffer = np.zeros(0, np.float32)  # native samples from (chunk_start - left_context) onwards
    chunk_start = 0  # native sample index of the next chunk
    left_context = 0
    emitted = False
    exhausted = False
    while True:
        pending, pending_length = [buffer], len(buffer)
        while not exhausted and pending_length < left_context + chunk_native + context:
            block = next(blocks, None)
            if block is None:
                exhausted = True
            else:
                pending.append(block)
                pending_length += len(block)
        buffer = np.concatenate(pending)
        chunk_length = min(chunk_native, len(buffer) - left_context)
        if chunk_length <= 0:
            break
        resampled = _resample(torch.from_numpy(buffer[:left_context + chunk_length + context].copy()),
                              native_rate, sample_rate)
        first = left_context // native_period * output_period
        count = math.ceil(chunk_length * output_period / native_period)
        yield chunk_start / native_rate, resampled[first:first + count]
        emitted = True
        chunk_start += chunk_length
        keep_from = left_context + chunk_length - context
        left_context = min(context, left_context + chunk_length)
        buffer = buffer[max(0, keep_from):]
    if not emitted:
        raise MediaError(path, "no audio samples")
