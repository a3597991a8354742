"""RAVDESS audio-visual emotion model (seed 002): audio encoder and/or video encoder -> concat -> Linear.

Audio encoders take 16 kHz waveforms (B, samples) with lengths, chosen by name (AUDIO_ENCODERS):
  mel       log-mel -> per-utterance normalisation (then per speaker: speaker_stats, SpeakerMoments) ->
            SpecAugment (training) -> 2-D CNN -> attentive + max pooling over time; from scratch, offline.
  wav2vec2  a transformers Wav2Vec2Model from a name or local directory, last N layers trainable,
            attention mask passed, masked mean over frames.
The video encoder takes uint8 frames (B, T, H, W, 3) with lengths: ImageNet normalisation, ResNet-18 trunk
(conv1..layer4), Linear -> d_model, sinusoidal positions, our transformer encoder, masked mean.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from common import load_pretrained, load_torchvision_weights
from preprocess.features import log_mel
from models.transformer import AttentionPool, SinusoidalPositions, TransformerEncoder, padding_mask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_bn_relu(in_channels, out_channels, *, dims):
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
    return [conv(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True)]


class MelEncoder(nn.Module):
    """Waveform (B, S) at 16 kHz -> (B, 3 * width). Log-mel (n_mels bins, window_ms window, 10 ms hop), each
    utterance standardised over its real frames (as a whole, or per mel bin: standardise_log_mels); while
    training: one random speed factor per batch (time stretch of the log-mel), a random shift of up to `max_bin_shift` mel bins per utterance (voice
    pitch/formant variation between speakers) and SpecAugment masks. A 2-D CNN (three conv + 2x2 max-pool
    blocks) sees local time-frequency patterns, its frequency axis is then folded into channels for a 1-D
    CNN over time, and attentive, max and standard-deviation pooling over real frames give the vector."""

    def __init__(self, *, n_mels=64, window_ms=25, widths_2d=(16, 32, 64), width=256, speed_range=0.15, max_bin_shift=3,
                 freq_masks=2, freq_mask_bins=10, time_masks=2, time_mask_frames=40, dropout=0.3, norm="clip"):
        super().__init__()
        self.hop_length, self.n_mels, self.norm = 160, n_mels, norm
        self.win_length = round(window_ms * 16)  # samples at 16 kHz
        self.n_fft = max(512, 1 << (self.win_length - 1).bit_length())  # the next power of two: 25 ms -> 512, 50 ms -> 1024
        self.speed_range, self.max_bin_shift = speed_range, max_bin_shift
        self.freq_masks, self.freq_mask_bins = freq_masks, freq_mask_bins
        self.time_masks, self.time_mask_frames = time_masks, time_mask_frames
        channels = (1, *widths_2d)
        self.cnn_2d = nn.Sequential(*(layer for i, o in zip(channels[:-1], channels[1:])
                                      for layer in (*conv_bn_relu(i, o, dims=2), nn.MaxPool2d(2))))
        self.time_reduction = 2 ** len(widths_2d)
        folded = widths_2d[-1] * (n_mels // self.time_reduction)
        self.cnn_1d = nn.Sequential(*conv_bn_relu(folded, width, dims=1), *conv_bn_relu(width, width, dims=1), nn.Dropout(0.1))
        self.attention_pool = AttentionPool(width)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = 3 * width

    def augment(self, log_mels, frame_counts):
        speed = 1.0 + (2 * float(torch.rand(())) - 1) * self.speed_range
        stretched = max(8, round(log_mels.shape[-1] * speed))
        frame_counts = (frame_counts * stretched / log_mels.shape[-1]).round().long().clamp(1, stretched)
        log_mels = F.interpolate(log_mels, size=stretched, mode="linear", align_corners=False)  # (B, M, F')
        log_mels = log_mels * (~padding_mask(frame_counts, stretched))[:, None, :]
        batch_size, n_mels, _ = log_mels.shape
        for row in range(batch_size):
            shift = int(torch.randint(-self.max_bin_shift, self.max_bin_shift + 1, ()))
            if shift:
                log_mels[row] = torch.roll(log_mels[row], shift, dims=0)
                (log_mels[row, :shift] if shift > 0 else log_mels[row, shift:]).zero_()  # no wrap-around
            for _ in range(self.freq_masks):
                width = int(torch.randint(0, self.freq_mask_bins + 1, ()))
                start = int(torch.randint(0, n_mels - width + 1, ()))
                log_mels[row, start:start + width, :] = 0.0
            for _ in range(self.time_masks):
                width = int(torch.randint(0, self.time_mask_frames + 1, ()))
                start = int(torch.randint(0, max(1, int(frame_counts[row]) - width + 1), ()))
                log_mels[row, :, start:start + width] = 0.0
        return log_mels, frame_counts

    def clip_log_mels(self, waves, lengths):
        """Waves (B, S) -> log-mels (B, M, F) standardised per clip (--mel-norm), real frame counts (B,)."""
        with torch.autocast(waves.device.type, enabled=False):
            log_mels = log_mel(waves.float(), n_mels=self.n_mels, n_fft=self.n_fft, win_length=self.win_length,
                               hop_length=self.hop_length)  # (B, M, F)
        frame_counts = (lengths // self.hop_length + 1).clamp(max=log_mels.shape[-1])
        return standardise_log_mels(log_mels, frame_counts, per_bin=self.norm == "bin"), frame_counts

    @torch.no_grad()
    def speaker_statistics(self, waves, prior=None):
        """One speaker's waves (a list of 1-D tensors) -> (2, M): the mean and std of each mel bin over all their
        clips' real frames (after the per-clip standardisation; with a prior, as SpeakerMoments), for forward's
        speaker_stats."""
        moments = SpeakerMoments(prior)
        for wave in waves:
            stats = moments.update(*self.clip_log_mels(wave[None].float(), torch.tensor([len(wave)])))
        return stats

    def forward(self, waves, lengths, speaker_stats=None, clip_log_mels=None):
        """clip_log_mels: clip_log_mels(waves, lengths) if the caller has it already (the timeline's speaker statistics)."""
        log_mels, frame_counts = clip_log_mels if clip_log_mels is not None else self.clip_log_mels(waves, lengths)
        if speaker_stats is not None:  # (B, 2, M): each clip's speaker's per-bin mean and std
            real = (~padding_mask(frame_counts, log_mels.shape[-1]))[:, None, :]
            log_mels = (log_mels - speaker_stats[:, 0, :, None]) / speaker_stats[:, 1, :, None] * real
        if self.training:
            log_mels, frame_counts = self.augment(log_mels, frame_counts)
        hidden = self.cnn_2d(log_mels.unsqueeze(1))  # (B, C, M / r, F / r)
        hidden = self.cnn_1d(hidden.flatten(1, 2)).transpose(1, 2)  # (B, F / r, width)
        is_pad = padding_mask((frame_counts // self.time_reduction).clamp(min=1, max=hidden.shape[1]), hidden.shape[1])
        attended = self.attention_pool(hidden, key_padding_mask=is_pad)
        peak = hidden.masked_fill(is_pad[:, :, None], float("-inf")).amax(dim=1)
        return self.dropout(torch.cat([attended, peak, masked_std(hidden, is_pad)], dim=1))  # (B, 3 * width)


class SpeakerMoments:
    """Running per-bin moments of one speaker's (or one file's) standardised log-mel frames: update(log_mels
    (B, M, F), frame_counts (B,)), as MelEncoder.clip_log_mels gives them, adds their real frames and returns the (2, M)
    mean and std of everything seen so far.
    prior (2, M), e.g. the training speakers' mean statistics, counts as `prior_frames` frames already seen (so the
    first seconds of a file are not normalised by themselves alone)."""

    def __init__(self, prior=None, prior_frames=3000):
        self.count, self.total, self.squares = 0, 0.0, 0.0
        if prior is not None:
            mean, std = prior.double()
            self.count, self.total, self.squares = prior_frames, mean * prior_frames, (std ** 2 + mean ** 2) * prior_frames

    def current(self):
        mean = self.total / self.count
        std = (self.squares / self.count - mean ** 2).clamp(min=0).sqrt().clamp(min=1e-3)
        return torch.stack([mean, std]).float()

    @torch.no_grad()
    def update(self, log_mels, frame_counts):
        real = (~padding_mask(frame_counts, log_mels.shape[-1]))[:, None, :].to(log_mels.dtype)
        self.count += int(frame_counts.sum())
        self.total = self.total + (log_mels * real).sum((0, 2)).double()
        self.squares = self.squares + (log_mels ** 2 * real).sum((0, 2)).double()
        return self.current()


def standardise_log_mels(log_mels, frame_counts, *, per_bin):
    """log-mels (B, M, F) standardised over each clip's real frames; padding stays exactly 0. per_bin: each mel
    bin by its own mean and std (CMVN: removes the clip's average spectrum, i.e. a speaker's steady spectral tilt and
    formant colouring and the recording channel); otherwise one mean and std per clip over all bins (removes only
    the gain, keeps the spectral shape)."""
    real = (~padding_mask(frame_counts, log_mels.shape[-1]))[:, None, :].to(log_mels.dtype).expand_as(log_mels)
    axes = 2 if per_bin else (1, 2)
    count = real.sum(axes, keepdim=True)
    mean = (log_mels * real).sum(axes, keepdim=True) / count
    std = (((log_mels - mean) * real) ** 2).sum(axes, keepdim=True).div(count).sqrt()
    return (log_mels - mean) / (std + 1e-5) * real


def masked_std(x, is_pad):
    """Standard deviation over the real positions of x (B, T, D) -> (B, D)."""
    real = (~is_pad)[:, :, None].to(x.dtype)
    count = real.sum(1).clamp(min=1)
    mean = (x * real).sum(1) / count
    return torch.sqrt((((x - mean[:, None]) * real) ** 2).sum(1) / count + 1e-5)


class Wav2Vec2Encoder(nn.Module):
    """A pretrained transformers wav2vec2 (name or local dir); the last `trainable_layers` transformer
    layers train, the rest stays frozen. Masked mean of the last hidden state -> (B, hidden)."""

    def __init__(self, *, model_name, trainable_layers=2):
        super().__init__()
        self.wav2vec2 = load_pretrained("Wav2Vec2Model", model_name)  # train_av switches train mode on per epoch
        self.wav2vec2.requires_grad_(False)
        layers = self.wav2vec2.encoder.layers
        for layer in layers[len(layers) - trainable_layers:] if trainable_layers > 0 else []:
            layer.requires_grad_(True)
        self.out_dim = self.wav2vec2.config.hidden_size

    def forward(self, waves, lengths):
        sample_is_real = ~padding_mask(lengths, waves.shape[1])
        hidden = self.wav2vec2(waves, attention_mask=sample_is_real.long()).last_hidden_state  # (B, F, H)
        frame_counts = self.wav2vec2._get_feat_extract_output_lengths(lengths).clamp(min=1, max=hidden.shape[1])
        frame_is_pad = padding_mask(frame_counts, hidden.shape[1])
        return hidden.masked_fill(frame_is_pad[:, :, None], 0.0).sum(1) / frame_counts[:, None].to(hidden.dtype)


AUDIO_ENCODERS = {
    # checkpoints from before --mel-norm / --mel-window-ms were trained with one mean and std per clip and 25-ms windows
    "mel": lambda args: MelEncoder(n_mels=args.n_mels, window_ms=getattr(args, "mel_window_ms", 25), max_bin_shift=args.max_bin_shift,
                                   norm=getattr(args, "mel_norm", "clip")),
    "wav2vec2": lambda args: Wav2Vec2Encoder(model_name=args.audio_model, trainable_layers=args.audio_trainable_layers),
}


class VideoEncoder(nn.Module):
    """Frames (B, T, H, W, 3) uint8 -> (B, d_model): ResNet-18 trunk per frame -> Linear -> positions ->
    transformer (3 layers, 2 heads, ff 512) -> masked mean over real frames."""

    def __init__(self, *, d_model=128, num_layers=3, nhead=2, dim_feedforward=512, dropout=0.1,
                 frame_size=112, resnet_weights=None, frozen_stages=0):
        super().__init__()
        resnet = torchvision.models.resnet18(weights=None)
        if resnet_weights:
            resnet.load_state_dict(load_torchvision_weights(resnet_weights, "resnet18"))
        self.trunk = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                                   resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        self.frozen = nn.ModuleList(list(self.trunk)[:4 + frozen_stages]) if frozen_stages else nn.ModuleList()
        self.frozen.requires_grad_(False)
        trunk_side = -(-frame_size // 32)  # layer4 downsamples by 32: 112 -> 4
        self.project = nn.Linear(512 * trunk_side * trunk_side, d_model)
        self.positions = SinusoidalPositions(d_model)
        self.encoder = TransformerEncoder(d_model=d_model, nhead=nhead, num_layers=num_layers,
                                          dim_feedforward=dim_feedforward, dropout=dropout)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.out_dim = d_model

    def train(self, mode=True):
        super().train(mode)
        self.frozen.eval()  # frozen BatchNorm keeps its statistics
        return self

    def forward(self, frames, lengths):
        batch_size, steps = frames.shape[:2]
        pixels = frames.flatten(0, 1).permute(0, 3, 1, 2).float()  # (B*T, 3, H, W)
        pixels = ((pixels - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        features = self.trunk(pixels).flatten(1)  # (B*T, 512 * side * side)
        tokens = self.project(features).view(batch_size, steps, -1)  # (B, T, d_model)
        frame_is_pad = padding_mask(lengths, steps)
        encoded = self.encoder(self.positions(tokens), src_key_padding_mask=frame_is_pad)
        kept = encoded.masked_fill(frame_is_pad[:, :, None], 0.0)
        return kept.sum(1) / lengths.clamp(min=1)[:, None].to(kept.dtype)


class AVEmotionClassifier(nn.Module):
    """`modalities` "a", "v" or "av": pooled encoder outputs concatenated -> dropout -> Linear(classes)."""

    def __init__(self, *, modalities, num_classes, audio_encoder=None, video_encoder=None, dropout=0.2):
        super().__init__()
        self.modalities = modalities
        self.audio = audio_encoder if "a" in modalities else None
        self.video = video_encoder if "v" in modalities else None
        fused_dim = (self.audio.out_dim if self.audio else 0) + (self.video.out_dim if self.video else 0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused_dim, num_classes))

    def forward(self, batch):
        pooled = []
        if self.audio is not None:
            extra = {key: batch[key] for key in ("speaker_stats", "clip_log_mels") if key in batch}  # mel encoder only
            pooled.append(self.audio(batch["audio"], batch["audio_lengths"], **extra))
        if self.video is not None:
            pooled.append(self.video(batch["frames"], batch["frame_lengths"]))
        return self.head(torch.cat(pooled, dim=1))
