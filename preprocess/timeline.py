"""Video (or audio) -> a per-second emotion timeline, streamed; the one path by which the predict modes of
train_highlight.py, train_fv2es.py and train_av.py read a file's media.

    from preprocess.timeline import FaceAnalyser, SpeechEmotion, build_timeline, write_timeline
    speech = SpeechEmotion.from_checkpoint("runs/speech-emotion/model.pt")   # a train_av.py -mod a model.pt
    faces = FaceAnalyser("weights/mtcnn", "weights/fer/mini_xception.pt")     # either file may be missing
    timeline = build_timeline("talk.mp4", speech=speech, faces=faces)          # {column: per-second array}
    write_timeline(out_dir, timeline)   # -> timeline.csv (one row per second) and timeline.npz (the arrays)

Media: `iter_seconds` decodes a file once (the video through media.iter_frames at a chosen rate and size, the
audio through media.iter_audio at 16 kHz, each in its own thread) and yields one MediaSecond per second: its
16000 samples (the last second shorter) and the frames sampled inside it. Nothing accumulates: memory does not
grow with the file's length. A file without an audio stream gives wave None (a face-only timeline), one
without a video stream no frames.

Per second s (the span [s, s+1)), the columns of timeline.csv and the keys of timeline.npz:
  second, loudness_dbfs      RMS level of the second's samples in dB full scale (floor -100)
  speech                     1 when at least SPEECH_MIN_FRACTION of the second's 25-ms frames (10-ms hop) are
                             SPEECH_ABOVE_FLOOR_DB above the noise floor (10th percentile of the frame levels of
                             the last NOISE_FLOOR_SECONDS s) and louder than SPEECH_MIN_DBFS; an energy rule, so
                             loud music or noise counts as speech
  speech_<class>             speech emotion probabilities (SpeechEmotion: a train_av.py -mod a checkpoint on a
                             window of --speech-window s centred on the second's middle, one every --speech-hop s;
                             a second averages the windows centred inside it, or takes the nearest); empty where
                             speech is 0
  speech_arousal             sum over classes of probability x AROUSAL[class]
  face                       1 when MTCNN finds a face in the second's first frame (decoded with its shorter side at
                             WORKING_SIDE; faces of FACE_MIN_PX and up there: 80 px and up in a 720p source)
  face_x1, face_y1, face_x2, face_y2   its largest face box in pixels of the source frame
  face_<expression>          mini-Xception probabilities of that face (FER_EMOTIONS order); empty without a face
  face_arousal               as speech_arousal, over the expression probabilities
  text_<class>               with a transcript (`start end text` lines) and a train_meld.py -mod t checkpoint: the
                             emotion of the transcript line covering the second's middle (TextEmotion); empty elsewhere

AROUSAL: where each label sits on the vertical (activation) axis of Russell's circumplex of affect (Russell 1980,
"A circumplex model of affect"): angry, afraid, surprised/astonished high; happy, disgusted above the middle;
neutral below it; sad and calm low. The numbers are our round reading of that ordering, not fitted to data;
bench/speech_timeline.py checks them against RAVDESS's intensity codes (arousal_strong against arousal_normal).
"""
import collections
import csv
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import InputError, atomic_write, load_checkpoint
from preprocess.features import crop_seconds, trim_silence
from preprocess.media import MediaError, decoded_ahead, iter_audio, iter_frames, probe

SAMPLE_RATE = 16000
AROUSAL = {"angry": 0.9, "anger": 0.9, "fearful": 0.8, "fear": 0.8, "surprised": 0.8, "surprise": 0.8,
           "happy": 0.7, "joy": 0.7, "disgust": 0.6, "neutral": 0.3, "sad": 0.2, "sadness": 0.2, "calm": 0.1}
UNKNOWN_AROUSAL = 0.5  # a label the table does not know (a manifest's own class names)
NEUTRAL_LABELS = ("neutral", "calm")  # the non-emotional classes: 1 - their probability is "non-neutral"
SPEECH_MIN_DBFS = -55.0          # RAVDESS's quietest speech (neutral, normal intensity) peaks near -45 dBFS
SPEECH_ABOVE_FLOOR_DB = 15.0
SPEECH_MIN_FRACTION = 0.2        # 200 ms of a second
NOISE_FLOOR_SECONDS = 30
FRAME_SAMPLES, HOP_SAMPLES = 400, 160  # 25-ms frames, 10-ms hop at 16 kHz
MIN_WINDOW_SAMPLES = SAMPLE_RATE // 4  # train_av's MIN_AUDIO_SAMPLES: shorter windows are zero-padded for pooling
# frames are decoded with the shorter side at most this: MTCNN looks for faces of FACE_MIN_PX and up on them (80 px of a
# 720p source: a face a ninth of the frame's height); the image encoders (64-224 px) and thumbnails (72 px) need less.
# Smaller faces add MTCNN's finest pyramid scales, where most of its time goes (bench/pipeline.py --only timeline).
WORKING_SIDE = 360
FACE_MIN_PX = 40
COARSE_FACE_FRACTION = 0.7  # one face's box varies by 10-20 % from second to second

AUDIO_CHUNK_SECONDS = 10  # the resampler's working arrays grow with the chunk (48 kHz: ~2.5 MB a second of audio)
MediaSecond = collections.namedtuple("MediaSecond", "second wave frames")  # wave: float32 tensor or None; frames: [(t, rgb)]


# ---------------------------------------------------------------------------------------------- media

def iter_one_second_waves(path):
    """The file's 16-kHz audio cut into 1-s tensors (the last one shorter)."""
    pending = torch.zeros(0)
    for _, chunk in iter_audio(path, chunk_seconds=AUDIO_CHUNK_SECONDS):
        pending = torch.cat([pending, chunk])
        for start in range(0, len(pending) - SAMPLE_RATE + 1, SAMPLE_RATE):
            yield pending[start:start + SAMPLE_RATE]
        pending = pending[len(pending) // SAMPLE_RATE * SAMPLE_RATE:]
    if len(pending):
        yield pending


def working_size(path):
    """The shorter side frames are decoded at: the source's, or WORKING_SIDE when it is larger (720p -> 360)."""
    info = probe(path)
    if not info["has_video"] or not info["width"]:
        return None
    return WORKING_SIDE if min(info["width"], info["height"]) > WORKING_SIDE else None


def iter_seconds(path, *, fps=None, interval_ms=None, size=None, center_crop=False, audio=True, video=True):
    """Decode `path` once: MediaSecond(second, wave, frames) for s = 0, 1, ... while either stream lasts. Frames are
    media.iter_frames(path, fps=fps or interval_ms=..., size=size, center_crop=center_crop) grouped by second; waves
    are 1-s pieces of the 16-kHz mono audio. audio/video=False skips a stream; a missing stream is skipped silently
    (the caller checks probe(path) when it needs one)."""
    info = probe(path)
    if audio != video and not (info["has_audio"] if audio else info["has_video"]):
        raise MediaError(path, f"no {'audio' if audio else 'video'} stream")
    audio, video = audio and info["has_audio"], video and info["has_video"]
    if not audio and not video:
        raise MediaError(path, "no audio or video stream to read")
    sampling = {"fps": fps} if interval_ms is None else {"interval_ms": interval_ms}
    frames = decoded_ahead(iter_frames(path, **sampling, size=size, center_crop=center_crop)) if video else iter(())
    waves = decoded_ahead(iter_one_second_waves(path), depth=4) if audio else iter(())
    try:
        pending, second = next(frames, None), 0
        while True:
            wave = next(waves, None)
            inside = []
            while pending is not None and pending[0] < second + 1:
                inside.append(pending)
                pending = next(frames, None)
            if wave is None and not inside and pending is None:
                return
            yield MediaSecond(second, wave, inside)
            second += 1
    finally:
        for stream in (frames, waves):
            getattr(stream, "close", lambda: None)()


def grid_times(start, end, step):
    """The sampling-grid times (seconds, multiples of step) for a segment: those in [start, end), or the first at or
    after start."""
    first = math.ceil(round(start / step, 6))
    last = math.ceil(round(end / step, 6)) - 1
    return [k * step for k in range(first, max(first, last) + 1)]


def iter_segments(path, segments, *, interval_ms, audio=True, video=True):
    """Per segment {key: (start_s, end_s)}: (key, frames, wave) as soon as the one decode (iter_seconds) has passed it,
    so in order of their ends: frames [(k, rgb)] at the segment's grid_times (frames sampled every interval_ms, k the
    index in the grid), wave the 16-kHz samples [start, end) (at least one sample where the audio reaches; None with
    audio=False). Holds only
    the media of segments not yet passed; stops decoding after the last segment."""
    step = interval_ms / 1000
    wanted, needed_until = {}, {}  # grid tick -> [(key, k)]; key -> seconds of media the segment needs
    for key, (start, end) in segments.items():
        times = grid_times(start, end, step)
        for k, time in enumerate(times):
            wanted.setdefault(round(time / step), []).append((key, k))
        needed_until[key] = max(end, times[-1] + step / 2)
    frames = {key: [] for key in segments}
    buffer, buffer_start, open_keys = torch.zeros(0), 0, sorted(segments, key=lambda key: needed_until[key])

    def finished(key):
        start, end = segments[key]
        first = int(start * SAMPLE_RATE)
        span = slice(first - buffer_start, max(first + 1, int(end * SAMPLE_RATE)) - buffer_start)
        return key, frames.pop(key), buffer[span].clone() if audio else None

    for media in iter_seconds(path, interval_ms=interval_ms, audio=audio, video=video):
        for time, rgb in media.frames:
            for key, k in wanted.get(round(time / step), []):
                frames[key].append((k, rgb))
        if media.wave is not None:
            buffer = torch.cat([buffer, media.wave])
        while open_keys and needed_until[open_keys[0]] <= media.second + 1:
            yield finished(open_keys.pop(0))
        if not open_keys:
            return
        keep_from = min(int(segments[key][0] * SAMPLE_RATE) for key in open_keys)
        if keep_from > buffer_start:
            buffer, buffer_start = buffer[keep_from - buffer_start:], keep_from
    for key in open_keys:  # past the end of the file: what there is
        yield finished(key)


# --------------------------------------------------------------------------------------- loudness, VAD

class SpeechDetector:
    """Per 1-s wave: (loudness dBFS, speech 0/1) by the energy rule in the module docstring; keeps the recent
    frame levels for the noise floor."""

    def __init__(self):
        self.recent_levels = collections.deque(maxlen=NOISE_FLOOR_SECONDS)

    def __call__(self, wave):
        if wave is None or len(wave) == 0:
            return -100.0, 0
        loudness = max(-100.0, 20 * float(torch.log10(wave.square().mean().sqrt() + 1e-10)))
        padded = F.pad(wave, (0, max(0, FRAME_SAMPLES - len(wave))))
        frame_rms = padded.unfold(0, FRAME_SAMPLES, HOP_SAMPLES).square().mean(1).sqrt()  # (frames,)
        levels = 20 * torch.log10(frame_rms + 1e-10)
        self.recent_levels.append(levels)
        floor = float(torch.quantile(torch.cat(list(self.recent_levels)), 0.1))
        loud = (levels >= max(SPEECH_MIN_DBFS, floor + SPEECH_ABOVE_FLOOR_DB)).float().mean()
        return loudness, int(loud >= SPEECH_MIN_FRACTION)


def arousal_of(probabilities, class_names):
    """(N, C) probabilities -> (N,) arousal in [0, 1] through AROUSAL."""
    weights = np.array([AROUSAL.get(name, UNKNOWN_AROUSAL) for name in class_names], np.float32)
    return np.asarray(probabilities, np.float32) @ weights


def non_neutral_of(probabilities, class_names):
    """(N, C) -> (N,): 1 - the probability of the NEUTRAL_LABELS classes."""
    neutral = [i for i, name in enumerate(class_names) if name in NEUTRAL_LABELS]
    return 1.0 - np.asarray(probabilities, np.float32)[:, neutral].sum(1)


# -------------------------------------------------------------------------------------- speech emotion

def evaluation_wave(wave, *, trim_db, max_seconds):
    """train_av's evaluation transform of a clip: leading/trailing silence cut at trim_db, then the centre max_seconds."""
    return crop_seconds(trim_silence(wave, trim_db), max_seconds, at_random=False)


def padded_batch(waves):
    """[1-D tensors] -> (B, max(len, MIN_WINDOW_SAMPLES)) zero-padded, lengths (B,)."""
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), max(int(lengths.max()), MIN_WINDOW_SAMPLES))
    for row, wave in enumerate(waves):
        batch[row, :len(wave)] = wave
    return batch, lengths


class SpeechEmotion:
    """A train_av.py audio model over sliding windows: `window_s` long, one centred every `hop_s` s from hop_s / 2
    (hop 1: on each second's middle). Each window gets train_av's evaluation transform (evaluation_wave)."""

    def __init__(self, model, class_names, settings, *, window_s=3.0, hop_s=1.0, batch_size=16, speaker_prior=None):
        if window_s <= 0 or hop_s <= 0:
            raise InputError(f"speech emotion: window {window_s} s and hop {hop_s} s must be positive")
        self.model, self.class_names, self.settings = model.eval(), list(class_names), settings
        self.speaker_prior = speaker_prior  # (2, M) of a --speaker-norm model: its training speakers' mean statistics
        self.window_s, self.hop_s, self.batch_size = window_s, hop_s, batch_size

    @classmethod
    def from_checkpoint(cls, path, **options):
        """model.pt of `train_av.py -mod a` (any audio encoder); InputError for a video model or a foreign file."""
        from models.av_emotion import AUDIO_ENCODERS, AVEmotionClassifier
        import argparse
        state = load_checkpoint(path)
        if not {"args", "class_names", "model"} <= set(state):
            raise InputError(f"{path}: not a train_av.py checkpoint (no args/class_names/model)")
        settings = state["args"]
        if settings.get("modalities") != "a":
            raise InputError(f"{path}: a -mod {settings.get('modalities')} model; speech emotion needs a train_av.py -mod a checkpoint")
        encoder = AUDIO_ENCODERS[settings["audio_encoder"]](argparse.Namespace(**settings))
        model = AVEmotionClassifier(modalities="a", num_classes=len(state["class_names"]), audio_encoder=encoder)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise InputError(f"{path}: weights do not fit the model its settings describe ({str(error).splitlines()[0][:120]})") from None
        return cls(model, state["class_names"], settings, speaker_prior=state.get("speaker_prior"), **options)

    def new_moments(self):
        """The running speaker statistics of one file for a --speaker-norm model (from the training speakers'
        prior), None for other models."""
        from models.av_emotion import SpeakerMoments
        return SpeakerMoments(self.speaker_prior) if self.settings.get("speaker_norm") else None

    @torch.no_grad()
    def classify(self, waves, moments=None, spoken=None):
        """[1-D 16-kHz tensors] -> (N, C) probabilities, each wave through train_av's evaluation transform. A
        --speaker-norm model normalises by `moments` (models.av_emotion.SpeakerMoments, from the training speakers'
        prior) updated with those of these windows flagged in `spoken` (all by default): the file is one speaker."""
        waves = [evaluation_wave(w, trim_db=self.settings.get("trim_db", 0), max_seconds=self.settings["max_audio_seconds"])
                 for w in waves]
        batch, lengths = padded_batch(waves)
        item = {"audio": batch, "audio_lengths": lengths}
        if self.settings.get("speaker_norm"):
            moments = moments or self.new_moments()
            rows = [row for row in range(len(waves)) if spoken is None or spoken[row]]
            if not rows and moments.count == 0:  # no prior and nothing spoken yet: these windows are all there is
                rows = list(range(len(waves)))
            log_mels, frame_counts = item["clip_log_mels"] = self.model.audio.clip_log_mels(batch, lengths)  # computed once
            stats = moments.update(log_mels[rows], frame_counts[rows]) if rows else moments.current()
            item["speaker_stats"] = stats[None].expand(len(waves), -1, -1)  # (N, 2, M)
        return self.model(item).softmax(-1).numpy()

    def windows(self):
        """A SlidingWindows fed 1-s waves in order that returns per-second probabilities at the end."""
        return SlidingWindows(self)


class SlidingWindows:
    """Streaming windows of one file: feed(wave) per second, then finish() -> (seconds, C) probabilities. Holds
    only the samples the pending windows need."""

    def __init__(self, speech):
        self.speech = speech
        self.half = int(speech.window_s * SAMPLE_RATE) // 2
        self.buffer, self.buffer_start, self.total = torch.zeros(0), 0, 0  # buffer holds samples from buffer_start
        self.next_window, self.centres, self.probabilities, self.queued = 0, [], [], []
        self.moments = speech.new_moments()  # the file is one speaker: online statistics of its speech so far
        self.spoken, self.queued_spoken = [], []

    def _centre(self, k):
        return round((k + 0.5) * self.speech.hop_s * SAMPLE_RATE)

    def feed(self, wave, speech=True):
        """The next second's wave; speech: whether it holds speech (only windows centred on speech update a
        --speaker-norm model's statistics)."""
        self.spoken.append(bool(speech))
        self.buffer = torch.cat([self.buffer, wave])
        self.total += len(wave)
        self._cut(final=False)

    def _cut(self, final):
        while True:
            centre = self._centre(self.next_window)
            if centre >= self.total if final else centre + self.half > self.total:
                break  # past the end, or (while feeding) waiting for the rest of this window
            start, end = max(0, centre - self.half), min(self.total, centre + self.half)
            self.queued.append(self.buffer[start - self.buffer_start:end - self.buffer_start].clone())
            self.centres.append(centre / SAMPLE_RATE)
            self.queued_spoken.append(self.spoken[min(int(centre / SAMPLE_RATE), len(self.spoken) - 1)])
            self.next_window += 1
            if len(self.queued) == self.speech.batch_size:
                self._flush()
        drop = max(0, self._centre(self.next_window) - self.half) - self.buffer_start
        if drop > 0:
            self.buffer, self.buffer_start = self.buffer[drop:], self.buffer_start + drop

    def _flush(self):
        if self.queued:
            self.probabilities.append(self.speech.classify(self.queued, self.moments, self.queued_spoken))
            self.queued, self.queued_spoken = [], []

    def finish(self, seconds):
        """(seconds, C): per second the mean of the windows centred inside it, or the nearest window."""
        self._cut(final=True)
        self._flush()
        classes = len(self.speech.class_names)
        if not self.probabilities:
            return np.zeros((seconds, classes), np.float32)
        windows, centres = np.concatenate(self.probabilities), np.array(self.centres)
        result = np.zeros((seconds, classes), np.float32)
        for second in range(seconds):
            inside = (centres >= second) & (centres < second + 1)
            result[second] = windows[inside].mean(0) if inside.any() else windows[np.abs(centres - second - 0.5).argmin()]
        return result


# ------------------------------------------------------------------------------------------ text

def read_transcript(path):
    """[(start, end, text)] from `start end text` lines (seconds); blank lines and # comments skipped."""
    segments = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(maxsplit=2)
        try:
            start, end = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise InputError(f"{path}:{number}: expected `start end text` (seconds), got {line.strip()[:60]!r}") from None
        if end <= start:
            raise InputError(f"{path}:{number}: end {end} is not after start {start}")
        segments.append((start, end, parts[2].strip() if len(parts) > 2 else ""))
    if not segments:
        raise InputError(f"{path}: no `start end text` lines")
    return segments


class TextEmotion:
    """A train_meld.py -mod t checkpoint on transcript lines, which it reads as one dialogue in time order (each line
    alone for a --context none model). A --text-joint model.pt holds its trained encoder (the folder its args name, or
    --text-model, gives the tokenizer and config); otherwise it needs the frozen sentence encoder it was trained on,
    and a model trained on a fine-tuned encoder (--text-finetune-epochs) cannot be used, since model.pt does not hold
    that encoder."""

    def __init__(self, path, *, text_model=None):
        from models.meld_emotion import JointTextClassifier, MELDEmotionClassifier, SentenceEncoder
        state = load_checkpoint(path)
        if not {"args", "input_dims", "feature_mean", "model"} <= set(state) or state["args"].get("modalities") != "t":
            raise InputError(f"{path}: not a train_meld.py -mod t checkpoint")
        args = state["args"]
        sizes = {"num_classes": len(state["class_names"]), "hidden": args["hidden"], "d_model": args["d_model"], "heads": args["heads"],
                 "dropout": args["dropout"]}
        self.joint = bool(args.get("text_joint"))
        if self.joint:
            self.model = JointTextClassifier(text_model or args["text_model"], max_length=args["text_max_len"], **sizes)
        elif args.get("text_finetune_epochs") or args.get("text_context"):
            raise InputError(f"{path}: trained on a fine-tuned or context-reading text encoder, which model.pt does not hold; "
                             "train with --text-joint, or --text-finetune-epochs 0 --text-context 0, for transcripts")
        else:
            self.encoder = SentenceEncoder(text_model or args["text_model"], max_length=args["text_max_len"])
            self.model = MELDEmotionClassifier(input_dims=state["input_dims"], **sizes)
            self.mean, self.std = state["feature_mean"]["t"], state["feature_std"]["t"]
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.class_names, self.context = list(state["class_names"]), args["context"]

    @torch.no_grad()
    def __call__(self, texts):
        """[line texts] -> (N, C) probabilities."""
        alone = self.context == "none"
        if self.joint:
            features = {"t": [[text] for text in texts] if alone else [list(texts)]}
        else:
            vectors = ((self.encoder.embed(texts).cpu() - self.mean) / self.std).float()  # (N, F)
            features = {"t": vectors[:, None] if alone else vectors[None]}              # (N, 1, F) or (1, N, F)
        lengths = torch.ones(len(texts), dtype=torch.long) if alone else torch.tensor([len(texts)])
        logits = self.model(features, lengths)
        return (logits[:, 0] if alone else logits[0]).softmax(-1).numpy()


def text_per_second(text, transcript, length):
    """(length, C) probabilities: per second those of the transcript line covering its middle (NaN rows: none)."""
    probabilities = text([line for _, _, line in transcript])
    result = np.full((length, len(text.class_names)), np.nan, np.float32)
    for second in range(length):
        covering = [i for i, (start, end, _) in enumerate(transcript) if start <= second + 0.5 < end]
        if covering:
            result[second] = probabilities[covering[-1]]
    return result


# ---------------------------------------------------------------------------------------- faces

class FaceAnalyser:
    """Largest face per frame (MTCNN for faces of min_face_px and up, on a copy whose shorter side is at most
    `detect_side` px; boxes scaled back) and its expression (mini-Xception from models.mini_xception). A missing MTCNN
    folder -> no faces (`available` False); a missing expression file -> boxes only; files present but broken ->
    InputError.

    Coarse first: a batch is searched for faces from COARSE_FACE_FRACTION of the smallest largest-face of the previous
    batch up, and only the frames where that finds none are searched from min_face_px up. The largest face is the same
    either way (a face larger than the one found is above the coarse size too), but MTCNN's pyramid then skips its
    finest, costliest scales."""

    def __init__(self, mtcnn_dir="weights/mtcnn", expression_path=None, *, detect_side=WORKING_SIDE, min_face_px=FACE_MIN_PX,
                 device="cpu"):
        from preprocess.mtcnn import NET_NAMES, MTCNN
        self.detect_side, self.min_face_px, self.recent_face_px = detect_side, min_face_px, None
        self.detector, self.expression = None, None
        if mtcnn_dir and any((Path(mtcnn_dir) / f"{name}.pt").exists() for name in NET_NAMES):
            self.detector = MTCNN.from_weights(mtcnn_dir, device=device, min_face_size=min_face_px)
        if expression_path and Path(expression_path).exists():
            from models.mini_xception import FER_EMOTIONS, load_mini_xception
            self.expression, self.expression_names = load_mini_xception(str(expression_path), device=device), list(FER_EMOTIONS)

    @property
    def available(self):
        return self.detector is not None

    def lacks(self):
        """What this analyser cannot give, as a short phrase, or ''."""
        if self.detector is None:
            return "no MTCNN weights: no faces"
        return "" if self.expression is not None else "no mini-Xception weights: face boxes without expressions"

    @torch.no_grad()
    def __call__(self, frames):
        """Same-size uint8 RGB frames (N, H, W, 3) -> boxes float32 (N, 4) (NaN rows: no face), expression
        probabilities (N, 7) (NaN rows) or None without the expression model."""
        from preprocess.mtcnn import largest_box, resize_uint8
        count, height, width = len(frames), frames.shape[1], frames.shape[2]
        boxes = np.full((count, 4), np.nan, np.float32)
        scale = min(1.0, self.detect_side / min(height, width))
        small = frames
        if scale < 1.0:  # frame by frame: a float copy of a whole batch of large frames would be hundreds of MB
            small = np.stack([resize_rgb(frame, round(height * scale), round(width * scale)) for frame in frames])
        coarse = max(self.min_face_px, int(COARSE_FACE_FRACTION * (self.recent_face_px or 0)))
        found = self._detect(small, coarse)
        missing = [index for index, faces in enumerate(found) if not len(faces)]
        if coarse > self.min_face_px and missing:
            for index, faces in zip(missing, self._detect(small[missing], self.min_face_px)):
                found[index] = faces
        sizes = []
        for index, faces in enumerate(found):
            if len(faces):
                box = largest_box(faces)[:4]
                boxes[index], sizes = box / scale, sizes + [min(box[2] - box[0], box[3] - box[1])]
        self.recent_face_px = min(sizes) if sizes else None
        expressions = None
        if self.expression is not None:
            from models.mini_xception import faces_to_input
            expressions = np.full((count, len(self.expression_names)), np.nan, np.float32)
            with_face = np.flatnonzero(~np.isnan(boxes[:, 0]))
            crops = [self._crop(frames[i], boxes[i], resize_uint8) for i in with_face]
            if crops:
                logits = self.expression(faces_to_input(np.stack(crops)).to(next(self.expression.parameters()).device))
                expressions[with_face] = logits.softmax(-1).cpu().numpy()
        return boxes, expressions

    def _detect(self, frames, min_face_px):
        self.detector.min_face_size = min_face_px
        return self.detector.detect_batch(frames)

    @staticmethod
    def _crop(frame, box, resize_uint8):
        """The box squared about its centre, clipped to the frame, as a 64x64 RGB crop."""
        centre_x, centre_y, side = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(box[2] - box[0], box[3] - box[1])
        x1, y1 = int(max(0, centre_x - side / 2)), int(max(0, centre_y - side / 2))
        x2, y2 = int(min(frame.shape[1], centre_x + side / 2)), int(min(frame.shape[0], centre_y + side / 2))
        return resize_uint8(frame[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)], 64)


def resize_rgb(frame, height, width):
    """uint8 (H, W, 3) -> uint8 (height, width, 3), bilinear with antialiasing."""
    pixels = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    resized = F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------------- the timeline

def build_timeline(path, *, speech=None, faces=None, text=None, transcript=None, frame_hooks=(), second_hooks=(), batch_seconds=16):
    """One streaming pass over `path` -> {column: per-second numpy array} (the module docstring's columns, plus
    "speech_classes"/"face_classes"/"text_classes" name lists; text: a TextEmotion on the transcript's lines). Frames are decoded at 1 fps at working_size(path); each hook in
    frame_hooks is called as hook(seconds, frames) with a batch of up to `batch_seconds` seconds that have a frame
    (uint8 (N, H, W, 3)), each in second_hooks as hook(media_second) for every second: the callers' own per-second
    features ride on the same decode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - 1)))  # the decoding thread keeps a core
    try:
        return _build_timeline(path, speech, faces, text, transcript, frame_hooks, second_hooks, batch_seconds)
    finally:
        torch.set_num_threads(threads)


def _build_timeline(path, speech, faces, text, transcript, frame_hooks, second_hooks, batch_seconds):
    info = probe(path)
    if faces is not None and not faces.available:
        faces = None
    detector, windows = SpeechDetector(), speech.windows() if speech is not None and info["has_audio"] else None
    columns = collections.defaultdict(list)
    face_rows = {}  # second -> (box (4,), expression (7,) or None)
    pending = []  # (second, frame) waiting for a batch

    def run_batch():
        if not pending:
            return
        seconds, frames = [s for s, _ in pending], np.stack([f for _, f in pending])
        for hook in frame_hooks:
            hook(seconds, frames)
        if faces is not None:
            boxes, expressions = faces(frames)
            for row, second in enumerate(seconds):
                face_rows[second] = (boxes[row], None if expressions is None else expressions[row])
        pending.clear()

    size = working_size(path)
    frame_shape, frame_scale = None, 1.0  # (height, width) decoded; source pixels per decoded pixel (720p decoded at 360: 2)
    for media in iter_seconds(path, fps=1, size=size, video=bool(frame_hooks) or faces is not None or not info["has_audio"]):
        loudness, has_speech = detector(media.wave)
        columns["loudness_dbfs"].append(loudness)
        columns["speech"].append(has_speech)
        if windows is not None and media.wave is not None:
            windows.feed(media.wave, has_speech)
        for hook in second_hooks:
            hook(media)
        if media.frames:
            frame = media.frames[0][1]
            if frame_shape is None:
                frame_shape = frame.shape[:2]
                frame_scale = min(info["width"], info["height"]) / min(frame_shape) if size else 1.0
            pending.append((media.second, frame))
            if len(pending) == batch_seconds:
                run_batch()
    run_batch()
    length = len(columns["speech"])
    timeline = {"second": np.arange(length), "loudness_dbfs": np.array(columns["loudness_dbfs"], np.float32),
                "speech": np.array(columns["speech"], np.int8), "has_audio": info["has_audio"], "has_video": info["has_video"],
                "frame_width": float(frame_shape[1] * frame_scale) if frame_shape else 0.0,
                "frame_height": float(frame_shape[0] * frame_scale) if frame_shape else 0.0}
    if windows is not None:
        probabilities = windows.finish(length)
        timeline["speech_classes"], timeline["speech_probabilities"] = list(speech.class_names), probabilities
        timeline["speech_arousal"] = arousal_of(probabilities, speech.class_names)
    if faces is not None:
        boxes = np.full((length, 4), np.nan, np.float32)
        for second, (box, _) in face_rows.items():
            boxes[second] = box * frame_scale
        timeline["face"], timeline["face_box"] = (~np.isnan(boxes[:, 0])).astype(np.int8), boxes
        if faces.expression is not None:
            expressions = np.full((length, len(faces.expression_names)), np.nan, np.float32)
            for second, (_, expression) in face_rows.items():
                expressions[second] = expression
            timeline["face_classes"], timeline["face_probabilities"] = list(faces.expression_names), expressions
            timeline["face_arousal"] = arousal_of(np.nan_to_num(expressions), faces.expression_names)
            timeline["face_arousal"][timeline["face"] == 0] = np.nan
    if text is not None and transcript:
        timeline["text_classes"], timeline["text_probabilities"] = list(text.class_names), text_per_second(text, transcript, length)
    return timeline


def timeline_rows(timeline):
    """(header, rows) of timeline.csv; speech emotion blank where speech is 0, face columns blank without a face."""
    length = len(timeline["second"])
    header, values = ["second", "loudness_dbfs", "speech"], [timeline["second"], timeline["loudness_dbfs"], timeline["speech"]]
    if "speech_probabilities" in timeline:
        silent = timeline["speech"] == 0
        header += [f"speech_{name}" for name in timeline["speech_classes"]] + ["speech_arousal"]
        masked = np.where(silent[:, None], np.nan, timeline["speech_probabilities"])
        values += list(masked.T) + [np.where(silent, np.nan, timeline["speech_arousal"])]
    if "face" in timeline:
        header += ["face", "face_x1", "face_y1", "face_x2", "face_y2"]
        values += [timeline["face"], *timeline["face_box"].T]
    if "face_probabilities" in timeline:
        header += [f"face_{name}" for name in timeline["face_classes"]] + ["face_arousal"]
        values += list(timeline["face_probabilities"].T) + [timeline["face_arousal"]]
    if "text_probabilities" in timeline:
        header += [f"text_{name}" for name in timeline["text_classes"]]
        values += list(timeline["text_probabilities"].T)

    def cell(value):
        if isinstance(value, (np.integer, int)):
            return str(int(value))
        return "" if np.isnan(value) else f"{float(value):.4f}"
    return header, [[cell(column[row]) for column in values] for row in range(length)]


def write_timeline(out_dir, timeline):
    """timeline.csv and timeline.npz (every array of the timeline; class names as string arrays) in out_dir."""
    out_dir = Path(out_dir)
    header, rows = timeline_rows(timeline)
    atomic_write(out_dir / "timeline.csv", lambda f: csv.writer(f, lineterminator="\n").writerows([header, *rows]), binary=False)
    arrays = {key: np.asarray(value) for key, value in timeline.items()}
    atomic_write(out_dir / "timeline.npz", lambda f: np.savez(f, **arrays))
    return out_dir / "timeline.csv"


# ------------------------------------------------------------------------------------ zero-shot score

# zero-shot emotional intensity: weights of the per-second components (renormalised over those the timeline has)
INTENSITY_WEIGHTS = {"speech_arousal": 0.35, "speech_non_neutral": 0.25, "expression_strength": 0.2, "loudness": 0.2}
INTENSITY_SMOOTHING_SECONDS = 3


def intensity_components(timeline):
    """{component: (T,) in [0, 1]} of the zero-shot score, from what the timeline holds:
      speech_arousal        speech_arousal where speech is 1, else 0
      speech_non_neutral    1 - P(neutral) - P(calm) of the speech emotion where speech is 1, else 0
      expression_strength   1 - P(neutral) of the face expression where a face is found, else 0
      loudness              the second's loudness as a fraction of the video's seconds that are quieter (its rank)"""
    loudness = timeline["loudness_dbfs"]
    components = {"loudness": np.searchsorted(np.sort(loudness), loudness, side="left") / max(1, len(loudness) - 1)}
    if not timeline.get("has_audio", True):
        components.pop("loudness")
    speech = timeline["speech"] == 1
    if "speech_probabilities" in timeline:
        components["speech_arousal"] = np.where(speech, timeline["speech_arousal"], 0.0)
        components["speech_non_neutral"] = np.where(speech, non_neutral_of(timeline["speech_probabilities"], timeline["speech_classes"]), 0.0)
    if "face_probabilities" in timeline:
        strength = non_neutral_of(np.nan_to_num(timeline["face_probabilities"]), timeline["face_classes"])
        components["expression_strength"] = np.where(timeline["face"] == 1, strength, 0.0)
    return {name: np.clip(values, 0, 1).astype(np.float32) for name, values in components.items()}


def emotional_intensity(timeline):
    """Zero-shot highlight score (T,) in [0, 1]: the INTENSITY_WEIGHTS-weighted mean of intensity_components
    (weights renormalised over the components present), then a centred INTENSITY_SMOOTHING_SECONDS-s moving
    average. Returns (score, {component: weight used})."""
    components = intensity_components(timeline)
    length = len(timeline["second"])
    if not components:
        return np.zeros(length, np.float32), {}
    total = sum(INTENSITY_WEIGHTS[name] for name in components)
    weights = {name: INTENSITY_WEIGHTS[name] / total for name in components}
    score = sum(weights[name] * values for name, values in components.items())
    kernel = np.ones(INTENSITY_SMOOTHING_SECONDS)
    smoothed = np.convolve(score, kernel, mode="same") / np.convolve(np.ones(length), kernel, mode="same")
    return smoothed.astype(np.float32), weights
