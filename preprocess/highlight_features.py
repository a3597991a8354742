"""Per-second features for highlight detection, and the utterance corpora the audio emotion probes train on.

Everything comes from one streaming pass over the video through preprocess.timeline.build_timeline (frames at
1 fps, audio in 1-s pieces), cached per video and settings. Per second:
  audio   [probe outputs: emotion probabilities, arousal, valence (with --probes)] [log-mel-64 mean+std of the
          second, or the wav2vec2 mean (--audio-model)] [speech emotion: the SpeechEmotion probabilities,
          speech_arousal, speech flag, loudness dBFS / 100 (with --speech-emotion-ckpt)]; the probes' input is
          the MFCC-32 mean+std of the second
  images  the second's frame, centre square resized to the encoder's size, through a frozen ViT (CLS token) or
          kept as uint8 pixels for the CNN trained with the model
  faces   (with --face-expression) [face flag, the 7 expression probabilities (0 without a face), face box
          area / frame area]

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
from preprocess.media import MediaError
from preprocess.ravdess import EMOTIONS as RAVDESS_EMOTIONS, scan_ravdess
from preprocess.timeline import FaceAnalyser, SpeechEmotion, build_timeline, iter_one_second_waves

SAMPLE_RATE = 16000
RAVDESS_VALENCE = {"neutral": 3, "calm": 4, "happy": 5, "sad": 1, "angry": 1, "fearful": 2, "disgust": 1, "surprised": 4}
AUDIO_BATCH_SECONDS = 60


def window_stats(windows):
    """windows (N, 16000) -> MFCC-32 mean+std (N, 64) for the probes, log-mel-64 mean+std (N, 128).
    The MFCC are those of mfcc(windows, n_mfcc=32, n_mels=64), computed from the one log-mel (same STFT)."""
    mels = log_mel(windows)                                                    # (N, 64, F)
    coefficients = mfcc_of_log_mel(mels, n_mfcc=32)                           # (N, 32, F)
    return (torch.cat([coefficients.mean(-1), coefficients.std(-1)], 1),
            torch.cat([mels.mean(-1), mels.std(-1)], 1))


def iter_windows(path, batch_seconds=60):
    """Stream (N, 16000) one-second windows of a file's audio in batches of whole seconds; the last partial second,
    zero-padded, comes in a batch of its own."""
    batch = []
    for wave in iter_one_second_waves(path):
        if len(wave) < SAMPLE_RATE:
            if batch:
                yield torch.stack(batch)
            yield F.pad(wave, (0, SAMPLE_RATE - len(wave)))[None]
            return
        batch.append(wave)
        if len(batch) == batch_seconds:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


class Encoders:
    """The frozen parts that turn a video into per-second features, rebuilt from a settings dict: probes, ViT,
    wav2vec2, and the timeline's SpeechEmotion ("speech_emotion_ckpt") and FaceAnalyser ("face_analysis": MTCNN
    from "mtcnn", expressions from "face_expression")."""

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
        self.speech = self.faces = None
        if settings.get("speech_emotion_ckpt"):
            self.speech = SpeechEmotion.from_checkpoint(settings["speech_emotion_ckpt"], window_s=settings.get("speech_window", 3.0),
                                                        hop_s=settings.get("speech_hop", 1.0))
        if settings.get("face_analysis"):
            self.faces = FaceAnalyser(settings.get("mtcnn"), settings.get("face_expression"))

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


def square_crops(frames, size):
    """uint8 (N, H, W, 3) -> the centre squares resized to uint8 (N, size, size, 3) (bilinear, antialiased)."""
    height, width = frames.shape[1:3]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    squares = torch.from_numpy(frames[:, top:top + side, left:left + side]).permute(0, 3, 1, 2).float()  # (N, 3, side, side)
    resized = F.interpolate(squares, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def fit_length(array, length):
    """Cut or edge-pad the first axis to `length` (streams differ by a frame or a partial second)."""
    if len(array) >= length:
        return array[:length]
    return np.concatenate([array, np.repeat(array[-1:], length - len(array), 0)])


def speech_features(timeline):
    """(T, C + 3): speech emotion probabilities, speech_arousal, speech flag, loudness dBFS / 100."""
    return np.concatenate([timeline["speech_probabilities"], timeline["speech_arousal"][:, None],
                           timeline["speech"][:, None].astype(np.float32), timeline["loudness_dbfs"][:, None] / 100], 1)


def face_features(timeline):
    """(T, 9): face flag, the 7 expression probabilities (0 without a face), box area / frame area."""
    boxes = np.nan_to_num(timeline["face_box"])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (timeline["frame_width"] * timeline["frame_height"])
    return np.concatenate([timeline["face"][:, None].astype(np.float32), np.nan_to_num(timeline["face_probabilities"]),
                           area[:, None]], 1).astype(np.float32)


def extract(path, encoders, settings, *, frame_hooks=(), text=None, transcript=None):
    """One pass over the video -> ({"audio", "images", "faces"} as the settings ask, each (T, ...)), timeline).
    frame_hooks ride on the same decode (build_timeline's); text and transcript go to build_timeline."""
    modalities, images, audio, waves = settings["modalities"], [], [], []

    def encode_frames(seconds, frames):
        images.append(encoders.images(square_crops(frames, encoders.frame_size)))

    def collect_wave(media):
        if media.wave is not None:
            waves.append(F.pad(media.wave, (0, SAMPLE_RATE - len(media.wave))))
            if len(waves) == AUDIO_BATCH_SECONDS:
                flush_waves()

    def flush_waves():
        if waves:
            audio.append(encoders.audio(torch.stack(waves)).numpy())
            waves.clear()

    timeline = build_timeline(path, speech=encoders.speech, faces=encoders.faces, text=text, transcript=transcript,
                              frame_hooks=[*(([encode_frames]) if "v" in modalities else []), *frame_hooks],
                              second_hooks=[collect_wave] if "a" in modalities else [])
    flush_waves()
    length, features = len(timeline["second"]), {}
    if "a" in modalities:
        if not audio:
            raise MediaError(path, f"no audio stream, but the model uses audio (-mod {modalities})")
        parts = [fit_length(np.concatenate(audio), length)]
        if encoders.speech is not None:
            parts.append(speech_features(timeline))
        features["audio"] = np.concatenate(parts, 1).astype(np.float32)
    if "v" in modalities:
        if not images:
            raise MediaError(path, f"no video {'stream' if not timeline['has_video'] else 'frames'}, but the model uses video (-mod {modalities})")
        features["images"] = fit_length(np.concatenate(images), length)
        if settings.get("face_expression"):
            features["faces"] = face_features(timeline)
    return features, timeline


def video_features(path, encoders, settings):
    """extract(...)[0], each array cached per video and settings (one pass computes whatever is missing)."""
    keys = {}
    if "a" in settings["modalities"]:
        keys["audio"] = {"kind": "audio", "probes": settings.get("probes_sha1"), "audio_model": settings.get("audio_model"),
                         "speech": settings.get("speech_emotion_sha1"), "window": settings.get("speech_window"),
                         "hop": settings.get("speech_hop"), "decode": "timeline"}
    if "v" in settings["modalities"]:
        keys["images"] = {"kind": "images", "encoder": settings["image_encoder"], "model": settings["image_model"],
                          "size": encoders.frame_size, "decode": "timeline"}
        if settings.get("face_expression"):
            keys["faces"] = {"kind": "faces", "expression": settings.get("face_expression_sha1"), "decode": "timeline"}
    computed = {}

    def compute(name):
        if not computed:
            computed.update(extract(path, encoders, settings)[0])
        return computed[name]
    return {name: cached_array(settings["cache"], path, key, lambda name=name: compute(name)) for name, key in keys.items()}


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
