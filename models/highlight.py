"""Highlight detection (seed 000): audio emotion probes, a small from-scratch frame CNN, and the
bidirectional temporal model that scores every second of a chunk.

    probe = EmotionProbe(in_features=64, num_emotions=8)
    emotion_logits, arousal, valence = probe(window_features)       # (N, 8), (N,), (N,)
    model = HighlightModel(modalities="av", audio_dim=138, image_dim=768)   # image_dim: ViT features
    model = HighlightModel(modalities="av", audio_dim=138, image_encoder=FrameCNN())  # raw 1-fps frames
    model = HighlightModel(modalities="av", audio_dim=138, image_dim=768, face_dim=9)   # + per-second face features
    logits = model(audio=(B, T, 138), images=(B, T, 768) or uint8 (B, T, H, W, 3), faces=(B, T, 9), lengths=(B,))  # (B, T)
With an image encoder, uint8 frames are encoded inside forward; float images count as already encoded. Face
features (face_dim > 0) join the encoded images before the image projection.
"""
import torch
from torch import nn

from models.lstm import LSTM


class EmotionProbe(nn.Module):
    """Per-window audio features (MFCC mean and std) -> emotion logits, arousal and valence (bounded to 1-5).
    The seed ran an LSTM over a length-1 sequence, which is an MLP; this is that MLP, written as one."""

    def __init__(self, *, in_features, num_emotions, hidden=128, dropout=0.2):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.emotion = nn.Linear(hidden, num_emotions)
        self.arousal_valence = nn.Linear(hidden, 2)

    def forward(self, features):
        hidden = self.trunk(features)
        arousal, valence = (1 + 4 * torch.sigmoid(self.arousal_valence(hidden))).unbind(-1)  # on the 1-5 scale
        return self.emotion(hidden), arousal, valence


class FrameCNN(nn.Module):
    """A small CNN trained from scratch with the temporal model: uint8 (N, H, W, 3) -> (N, out_dim)."""

    def __init__(self, *, widths=(16, 32, 64), out_dim=64):
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.project = nn.Linear(2 * channels, out_dim)
        self.out_dim = out_dim

    def forward(self, frames):
        images = frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (N, 3, H, W) in [-1, 1]
        maps = self.convs(images)                                         # (N, C, H/8, W/8)
        pooled = torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], 1)     # (N, 2C)
        return self.project(pooled)


class HighlightModel(nn.Module):
    """Per-modality projection -> concatenation -> bidirectional LSTM over the chunk -> one logit per second."""

    def __init__(self, *, modalities, audio_dim=0, image_dim=0, image_encoder=None, face_dim=0, d_model=64, hidden=128,
                 num_layers=2, dropout=0.2):
        super().__init__()
        self.modalities = modalities
        self.image_encoder = image_encoder
        width = 0
        if "a" in modalities:
            self.audio_project = nn.Sequential(nn.Linear(audio_dim, d_model), nn.ReLU(), nn.Dropout(dropout))
            width += d_model
        if "v" in modalities:
            in_dim = (image_encoder.out_dim if image_encoder is not None else image_dim) + face_dim
            self.image_project = nn.Sequential(nn.Linear(in_dim, d_model), nn.ReLU(), nn.Dropout(dropout))
            width += d_model
        self.temporal = LSTM(width, hidden, num_layers=num_layers, bidirectional=True, dropout=dropout)
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, *, audio=None, images=None, faces=None, lengths=None):
        parts = []
        if "a" in self.modalities:
            parts.append(self.audio_project(audio))                         # (B, T, d_model)
        if "v" in self.modalities:
            if self.image_encoder is not None and images.dtype == torch.uint8:  # raw frames; floats are already encoded
                batch, steps = images.shape[:2]
                images = self.image_encoder(images.flatten(0, 1)).view(batch, steps, -1)  # (B, T, out_dim)
            if faces is not None:
                images = torch.cat([images, faces], -1)                     # (B, T, out_dim + face_dim)
            parts.append(self.image_project(images))
        output, _ = self.temporal(torch.cat(parts, -1), lengths=lengths)  # (B, T, 2 * hidden)
        return self.head(output).squeeze(-1)                              # (B, T)
