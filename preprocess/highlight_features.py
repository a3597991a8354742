"""Per-second features for highlight detection, and the utterance corpora the audio emotion probes train on.

Per second of a video: the frame sampled at that second (RGB, centre crop) through a frozen ViT (CLS token)
or kept as pixels for the CNN trained with the model; the audio window [s, s+1) as MFCC-32 mean+std (the
probes' input), the probes' outputs (emotion probabilities, arousal, valence) and log-mel-64 mean+std or
the wav2vec2 mean. Everything streams (frames in batches, audio in 60-s chunks) and is cached per video.

Probe corpora, each utterance -> (path, emotion, arousal 1-5, valence 1-5, speaker group):
- RAVDESS (preprocess.ravdess): arousal 2 (normal) / 4 (strong intensity), valence from the emotion.
- KEMDy20 (parsed by preprocess.kemdy20): annotation/SessNN_eval.csv (Segment ID, Emotion, Valence, Arousal;
  ';'-joined ties take the first emotion) and wav/SessionNN/<SegmentID>.wav; the group is the session, so
  the split is by session (and so by speaker).
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import load_pretrained
from models.highlight import EmotionProbe
from preprocess.cache import cached_array
from preprocess.features import log_mel, mfcc_of_log_mel
from preprocess.kemdy20 import EMOTIONS as KEMDY20_EMOTIONS, scan_kemdy20
from preprocess.media import decoded_ahead, iter_audio, iter_frames
from preprocess.ravdess import EMOTIONS as RAVDESS_EMOTIONS, scan_ravdess

SAMPLE_RATE = 16000
RAVDESS_VALENCE = {"neutral": 3, "calm": 4, "happy": 5, "sad": 1, "angry": 1, "fearful": 2, "disgust": 1, "surprised": 4}


def window_stats(windows):
    """windows (N, 16000) -> MFCC-32 mean+std (N, 64) for the probes, log-mel-64 mean+std (N, 128).
    The MFCC are those of mfcc(windows, n_mfcc=32, n_mels=64), computed from the one log-mel (same STFT)."""
    mels = log_mel(windows)                                                    # (N, 64, F)
    coefficients = mfcc_of_log_mel(mels, n_mfcc=32)                           # (N, 32, F)
    return (torch.cat([coefficients.mean(-1), coefficients.std(-1)], 1),
            torch.cat([mels.mean(-1), mels.std(-1)], 1))


def iter_windows(path, batch_seconds=60):
    """Stream (N, 16000) one-second windows of a file's audio; the last partial second is zero-padded."""
    pending = torch.zeros(0)
    for _, chunk in iter_audio(path, chunk_seconds=batch_seconds):
        pending = torch.cat([pending, chunk])
        whole = len(pending) // SAMPLE_RATE * SAMPLE_RATE
        if whole:
            yield pending[:whole].view(-1, SAMPLE_RATE)
            pending = pending[whole:]
    if len(pending):
        yield F.pad(pending, (0, SAMPLE_RATE - len(pending)))[None]


class Encoders:
    """The frozen parts that turn a video into per-second features, rebuilt from a settings dict."""

    def __init__(self, settings, probe_state=None):
        self.settings, self.probe_state, self.probe, self.vit, self.wav2vec2 = settings, probe_state, None, None, None
        if probe_state is not None:
            self.probe = EmotionProbe(in_features=64, num_emotions=len(probe_state["class_names"]))
            self.probe.load_state_dict(probe_state["model"])
            self.probe.eval()
        if "v" in settings["modalities"] and settings["image_encoder"] == "vit":
            self.vit = load_pretrained("ViTModel", settings["image_model"])
        if settings.get("audio_model"):
            self.wav2vec2 = load_pretrained("Wav2Vec2Model", settings["audio_model"])

    @property
    def frame_size(self):
        return self.vit.config.image_size if self.vit is not None else self.settings["frame_size"]

    @torch.no_grad()
    def audio(self, windows):
        """(N, 16000) -> (N, D): [emotion probabilities, arousal, valence] when probes are given, then
        log-mel statistics (or the wav2vec2 mean)."""
        probe_inputs, mel_stats = window_stats(windows)
        parts = []
        if self.probe is not None:
            normalised = (probe_inputs - self.probe_state["feature_mean"]) / self.probe_state["feature_std"]
            emotion_logits, arousal, valence = self.probe(normalised)
            parts += [emotion_logits.softmax(-1), arousal[:, None], valence[:, None]]
        parts.append(self.wav2vec2(windows).last_hidden_state.mean(1) if self.wav2vec2 is not None else mel_stats)
        return torch.cat(parts, 1)

    @torch.no_grad()
    def images(self, frames):
        """uint8 (N, S, S, 3) -> ViT CLS features (N, 768), or the frames themselves for the trained CNN."""
        if self.vit is None:
            return frames
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # ViT in21k: mean 0.5, std 0.5
        return self.vit(pixel_values=pixels).last_hidden_state[:, 0].numpy()

    def iter_image_batches(self, path, batch=32):
        """Stream (timestamps, frames, encoded batch) at 1 frame per second."""
        times, frames = [], []
        # decoding runs a few frames ahead in its own thread while the encoder works on a batch
        for timestamp, frame in decoded_ahead(iter_frames(path, fps=1, size=self.frame_size, center_crop=True)):
            times.append(timestamp), frames.append(frame)
            if len(frames) == batch:
                yield times, frames, self.images(np.stack(frames))
                times, frames = [], []
        if frames:
            yield times, frames, self.images(np.stack(frames))


def fit_length(array, length):
    """Cut or edge-pad the first axis to `length` (streams differ by a frame or a partial second)."""
    if len(array) >= length:
        return array[:length]
    return np.concatenate([array, np.repeat(array[-1:], length - len(array), 0)])


def video_features(path, encoders, settings):
    """{"audio": (T_a, D_a) float32, "images": (T_v, ...) } cached per video and settings."""
    result = {}
    if "a" in settings["modalities"]:
        key = {"kind": "audio", "probes": settings.get("probes_sha1"), "audio_model": settings.get("audio_model")}
        result["audio"] = cached_array(settings["cache"], path, key, lambda: torch.cat(
            [encoders.audio(windows) for windows in iter_windows(path)]).numpy().astype(np.float32))
    if "v" in settings["modalities"]:
        key = {"kind": "images", "encoder": settings["image_encoder"], "model": settings["image_model"], "size": encoders.frame_size}
        result["images"] = cached_array(settings["cache"], path, key, lambda: np.concatenate(
            [encoded for _, _, encoded in encoders.iter_image_batches(path)]))
    return result


# ---------------------------------------------------------------- probe corpora

def probe_utterances(root):
    """(class_names, [(audio path, emotion index, arousal, valence, group)]) from a RAVDESS or KEMDy20 folder."""
    root = Path(root)
    if (root / "annotation").is_dir():
        return list(KEMDY20_EMOTIONS), kemdy20_utterances(root)
    trials, _ = scan_ravdess(root)
    return list(RAVDESS_EMOTIONS), [(t.audio_path(), RAVDESS_EMOTIONS.index(t.label), 2.0 * int(t.key.split("-")[2]),
                                     float(RAVDESS_VALENCE[t.label]), t.group) for t in trials if t.audio_path() is not None]


def kemdy20_utterances(root):
    """The utterances preprocess.kemdy20 (the one KEMDy20 parser) accepts; the rows it skips are printed as a count."""
    utterances, problems = scan_kemdy20(root)
    if problems:
        print(f"{root}: {len(problems)} KEMDy20 item(s) skipped, e.g. {problems[0][0]}: {problems[0][1]}")
    return [(u.wav, u.emotion, u.arousal, u.valence, f"Sess{u.session:02d}") for u in utterances]
