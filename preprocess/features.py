"""Audio features in torch/torchaudio: log-mel, MFCC and five prosody values.

Every function takes a mono waveform, 1-D (samples,) or batched (B, samples), float samples in [-1, 1]
at `sample_rate` (16 kHz by default; numpy arrays are accepted too). Scalar features come back as a
tensor of shape wave.shape[:-1]: a 0-d tensor for one wave (use float(...)), (B,) for a batch.

    log_mel             (n_mels, frames)  ln(mel power + 1e-6)
    mfcc                (n_mfcc, frames)  orthonormal DCT-II of log_mel (= torchaudio MFCC, log_mels=True)
    spectral_centroid   Hz, magnitude-weighted mean frequency over all frames
    zero_crossing_rate  sign changes per sample pair (a sine of f Hz gives 2 f / sample_rate)
    rms                 root mean square of the samples
    pitch               Hz, median YIN F0 over voiced frames
    tempo               BPM, autocorrelation peak of the spectral-flux onset envelope
    prosody             the five above stacked in PROSODY_NAMES order: (5,) or (B, 5)
    speech_bounds, trim_silence, crop_seconds   leading/trailing silence found and cut, a centre or random crop
                        (train_av's clips and the timeline's speech windows)

Silence, empty waves and waves shorter than one frame give finite values and never raise: silence gives
0 for every prosody value; the spectrograms zero-pad a short wave so at least one frame comes out.
The SPEC's uses: 32 (highlight probes) / 25 (MELD) MFCC means, 13 MFCC (KEMDy20), prosody (MELD),
log_mel(n_mels=128, win_length=400, hop_length=200) (FV2ES).
"""
import functools
import math

import numpy as np
import torch
import torchaudio

PROSODY_NAMES = ("spectral_centroid_hz", "zero_crossing_rate", "rms", "pitch_hz", "tempo_bpm")
LOG_FLOOR = 1e-6
PITCH_HOP_SECONDS = 0.010
SILENT_FRAME_RMS = 1e-5    # frames quieter than this (about -100 dBFS) are never voiced
NO_ONSET_STRENGTH = 0.25   # mean log-mel rise (nats, ~2 dB) of an onset; a steady tone flickers ~0.06
TOP_DB_NATS = 80 * math.log(10) / 10  # tempo ignores log-mel bands more than 80 dB under the peak
ONSET_SMOOTHING_FRAMES = 9  # 90 ms: an onset split over two frames stays one peak at non-integer periods


def _as_wave(wave):
    return torch.as_tensor(wave, dtype=torch.float32)


def _pad_to_length(wave, min_samples):
    """Zero-pad the end of the last axis up to min_samples."""
    missing = min_samples - wave.shape[-1]
    return torch.nn.functional.pad(wave, (0, missing)) if missing > 0 else wave


@functools.lru_cache(maxsize=32)
def _mel_transform(sample_rate, n_fft, win_length, hop_length, f_min, f_max, n_mels, device):
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
        f_min=f_min, f_max=f_max, n_mels=n_mels, power=2.0)
    return transform.to(device)


@functools.lru_cache(maxsize=32)
def _magnitude_transform(n_fft, win_length, hop_length, device):
    return torchaudio.transforms.Spectrogram(n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                                             power=1.0).to(device)


@functools.lru_cache(maxsize=32)
def _dct_matrix(n_mfcc, n_mels, device):
    return torchaudio.functional.create_dct(n_mfcc, n_mels, norm="ortho").to(device)  # (n_mels, n_mfcc)


def log_mel(wave, *, sample_rate=16000, n_mels=64, n_fft=512, win_length=400, hop_length=160,
            f_min=0.0, f_max=None):
    """Natural log of (mel power spectrogram + 1e-6): (..., n_mels, frames), frames = 1 + samples // hop.
    Frames are centred (reflect padding, as librosa); a wave shorter than n_fft // 2 + 1 samples is first
    zero-padded to that length. HTK mel scale, no filter normalisation (torchaudio defaults)."""
    wave = _pad_to_length(_as_wave(wave), n_fft // 2 + 1)
    transform = _mel_transform(sample_rate, n_fft, win_length, hop_length, float(f_min),
                               None if f_max is None else float(f_max), n_mels, str(wave.device))
    return torch.log(transform(wave) + LOG_FLOOR)


def mfcc(wave, *, sample_rate=16000, n_mfcc=13, n_mels=40, n_fft=512, win_length=400, hop_length=160):
    """MFCC: (..., n_mfcc, frames), the orthonormal DCT-II of log_mel over mel bins. Equals
    torchaudio.transforms.MFCC(..., log_mels=True); no dB/top_db step, which would couple batch items."""
    return mfcc_of_log_mel(log_mel(wave, sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, win_length=win_length,
                                   hop_length=hop_length), n_mfcc=n_mfcc)


def mfcc_of_log_mel(log_mels, *, n_mfcc=13):
    """MFCC from an existing log_mel (..., n_mels, frames) -> (..., n_mfcc, frames), for callers that need both."""
    dct = _dct_matrix(n_mfcc, log_mels.shape[-2], str(log_mels.device))  # (n_mels, n_mfcc)
    return (log_mels.transpose(-1, -2) @ dct).transpose(-1, -2)


def spectral_centroid(wave, *, sample_rate=16000, n_fft=512, win_length=400, hop_length=160):
    """Hz. Centroid of the STFT magnitude pooled over all frames, i.e. the mean of per-frame centroids
    weighted by each frame's total magnitude, so quiet frames barely count. 0.0 for silence."""
    wave = _pad_to_length(_as_wave(wave), n_fft // 2 + 1)
    transform = _magnitude_transform(n_fft, win_length, hop_length, str(wave.device))
    magnitude = transform(wave)                                    # (..., bins, frames)
    bin_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, device=wave.device)
    weight_by_bin = magnitude.sum(-1)                              # (..., bins)
    total = weight_by_bin.sum(-1)
    return torch.where(total > 0, (weight_by_bin * bin_hz).sum(-1) / total.clamp_min(1e-30),
                       torch.zeros_like(total))


def zero_crossing_rate(wave):
    """Fraction of adjacent sample pairs whose signs differ, zero counting as positive (so silence gives
    0). A sine of f Hz gives 2 f / sample_rate. Waves of fewer than 2 samples give 0."""
    wave = _as_wave(wave)
    if wave.shape[-1] < 2:
        return wave.new_zeros(wave.shape[:-1])
    non_negative = wave >= 0
    return (non_negative[..., 1:] != non_negative[..., :-1]).float().mean(-1)


def rms(wave):
    """Root mean square of the samples (a sine of amplitude A gives A / sqrt 2); 0.0 for an empty wave."""
    wave = _as_wave(wave)
    if wave.shape[-1] == 0:
        return wave.new_zeros(wave.shape[:-1])
    return wave.square().mean(-1).sqrt()


def speech_bounds(wave, *, top_db=35.0, sample_rate=16000, frame_length=400, hop_length=160, pad_seconds=0.1):
    """(start, end) sample indices of the span from the first to the last 25-ms frame whose RMS is within
    `top_db` dB of the loudest frame, widened by `pad_seconds` each side: leading and trailing silence cut
    (RAVDESS clips open with about a second of it). A silent or too-short wave gives (0, len)."""
    wave = _as_wave(wave)
    total = wave.shape[-1]
    if total < frame_length:
        return 0, total
    frame_rms = wave.unfold(-1, frame_length, hop_length).square().mean(-1).sqrt()  # (frames,)
    loud = frame_rms >= frame_rms.max() * 10 ** (-top_db / 20)
    if frame_rms.max() <= 0 or not loud.any():
        return 0, total
    indices = loud.nonzero().flatten()
    pad = int(pad_seconds * sample_rate)
    return max(0, int(indices[0]) * hop_length - pad), min(total, int(indices[-1]) * hop_length + frame_length + pad)


def trim_silence(wave, top_db, *, sample_rate=16000):
    """The wave (numpy or torch, 1-D) without its leading and trailing silence (speech_bounds at top_db),
    unchanged when top_db is 0: train_av's --trim-db."""
    if not top_db:
        return wave
    start, end = speech_bounds(torch.tensor(np.asarray(wave, dtype=np.float32)), top_db=top_db, sample_rate=sample_rate)
    return wave[start:end]


def crop_seconds(wave, seconds, *, at_random, sample_rate=16000):
    """At most `seconds` of the wave: a random window (training) or the centre one (evaluation, prediction)."""
    keep = int(seconds * sample_rate)
    if keep <= 0 or len(wave) <= keep:
        return wave
    start = int(torch.randint(0, len(wave) - keep + 1, ())) if at_random else (len(wave) - keep) // 2
    return wave[start:start + keep]


def _parabolic_offset(left, centre, right):
    """Offset in [-0.5, 0.5] of the vertex of the parabola through (-1, left), (0, centre), (1, right)."""
    curvature = left - 2 * centre + right
    curved = curvature.abs() > 1e-12
    offset = 0.5 * (left - right) / torch.where(curved, curvature, torch.ones_like(curvature))
    return torch.where(curved, offset, torch.zeros_like(offset)).clamp(-0.5, 0.5)


def pitch(wave, *, sample_rate=16000, f_min=50.0, f_max=600.0, threshold=0.1):
    """Hz. Median F0 over voiced frames, 0.0 when no frame is voiced. YIN (de Cheveigne & Kawahara 2002):
    per 10 ms frame, the cumulative mean normalised difference d'(tau) over lags sample_rate/f_max ..
    sample_rate/f_min; the frame is voiced when d' dips below `threshold`, the lag is the first local
    minimum under it, refined by a parabola through the raw difference d(tau) at the lag and its
    neighbours. Integration window = the longest period, so one full period of f_min fits."""
    wave = _as_wave(wave).to(torch.float64)  # d = e0 + e_tau - 2 r cancels to ~0 at the period
    lag_min = max(2, int(sample_rate / f_max))
    lag_max = math.ceil(sample_rate / f_min)
    window = lag_max
    frame_length = window + lag_max + 2                      # room for d at lag_max + 1
    hop = max(1, round(PITCH_HOP_SECONDS * sample_rate))
    frames = _pad_to_length(wave, frame_length).unfold(-1, frame_length, hop)  # (..., F, frame_length)

    # d(tau) = sum_{j<window} (x_j - x_{j+tau})^2 = e(0) + e(tau) - 2 r(tau), r by FFT cross-correlation
    n_fft = 1 << (frame_length + window - 1).bit_length()
    spectrum = torch.fft.rfft(frames, n_fft)
    head_spectrum = torch.fft.rfft(frames[..., :window], n_fft)
    cross = torch.fft.irfft(head_spectrum.conj() * spectrum, n_fft)[..., :lag_max + 2]  # (..., F, lags)
    energy_prefix = torch.nn.functional.pad(frames.square().cumsum(-1), (1, 0))
    lags = torch.arange(lag_max + 2, device=wave.device)
    energy_at_lag = energy_prefix[..., lags + window] - energy_prefix[..., lags]            # (..., F, lags)
    difference = (energy_at_lag[..., :1] + energy_at_lag - 2 * cross).clamp_min(0)
    difference[..., 0] = 0

    running_sum = difference[..., 1:].cumsum(-1)
    cmnd = torch.ones_like(difference)
    normalised = difference[..., 1:] * lags[1:] / running_sum.clamp_min(1e-300)
    cmnd[..., 1:] = torch.where(running_sum > 0, normalised, torch.ones_like(running_sum))

    searched = cmnd[..., lag_min - 1:lag_max + 2]           # lags lag_min-1 .. lag_max+1
    centre = searched[..., 1:-1]                             # lags lag_min .. lag_max
    is_dip = (centre < threshold) & (centre < searched[..., :-2]) & (centre <= searched[..., 2:])
    loud = energy_at_lag[..., 0] > window * SILENT_FRAME_RMS ** 2
    voiced = is_dip.any(-1) & loud                           # (..., F)
    best_lag = lag_min + is_dip.int().argmax(-1)             # first dip, (..., F)

    neighbours = torch.stack([best_lag - 1, best_lag, best_lag + 1], -1)
    left, middle, right = difference.gather(-1, neighbours).unbind(-1)
    period = best_lag + _parabolic_offset(left, middle, right)
    f0 = torch.where(voiced, sample_rate / period, torch.full_like(period, float("nan")))
    return torch.nan_to_num(f0.nanmedian(-1).values, nan=0.0).float()


def tempo(wave, *, sample_rate=16000, min_bpm=40.0, max_bpm=240.0):
    """BPM. Onset envelope = mean over 40 mel bands of the positive frame-to-frame rise of log_mel
    (25 ms windows, 10 ms hop; values more than 80 dB under the wave's loudest are clamped, as librosa's
    top_db, so flicker in near-empty bands is no onset; frames that reach past either end of the wave
    are dropped), smoothed over 90 ms. Its mean-removed autocorrelation is searched over lags
    60/max_bpm .. 60/min_bpm seconds and the highest peak is refined with a parabola. 0.0 when there are
    no onsets (the envelope never exceeds NO_ONSET_STRENGTH) or no positive autocorrelation in range."""
    wave = _as_wave(wave)
    hop = max(1, round(0.010 * sample_rate))
    win = max(1, round(0.025 * sample_rate))
    frames_per_second = sample_rate / hop
    log_mels = log_mel(wave, sample_rate=sample_rate, n_mels=40, n_fft=1 << (win - 1).bit_length(),
                       win_length=win, hop_length=hop)            # (..., 40, T)
    floor = log_mels.amax((-2, -1), keepdim=True) - TOP_DB_NATS
    frame_starts = torch.arange(log_mels.shape[-1], device=wave.device) * hop - win // 2
    inside = (frame_starts >= 0) & (frame_starts + win <= wave.shape[-1])
    log_mels = torch.maximum(log_mels, floor)[..., inside]      # (..., 40, T_inside)
    if log_mels.shape[-1] < 2:
        return wave.new_zeros(wave.shape[:-1])
    envelope = (log_mels[..., 1:] - log_mels[..., :-1]).clamp_min(0).mean(-2)  # (..., T_inside - 1)
    has_onsets = envelope.amax(-1) > NO_ONSET_STRENGTH
    smoothing = torch.hann_window(ONSET_SMOOTHING_FRAMES + 2, periodic=False, device=wave.device)[1:-1]
    smoothing = (smoothing / smoothing.sum()).view(1, 1, -1)
    envelope = torch.nn.functional.conv1d(envelope.reshape(-1, 1, envelope.shape[-1]), smoothing,
                                          padding=ONSET_SMOOTHING_FRAMES // 2).view(envelope.shape)
    centred = envelope - envelope.mean(-1, keepdim=True)

    lag_min = max(1, math.floor(frames_per_second * 60 / max_bpm))
    lag_max = math.ceil(frames_per_second * 60 / min_bpm)
    n_fft = 1 << (centred.shape[-1] + lag_max + 1).bit_length()
    power = torch.fft.rfft(centred, n_fft).abs().square()
    autocorrelation = torch.fft.irfft(power, n_fft)[..., :lag_max + 2]  # (..., lags), biased (no 1/(N-lag))

    searched = autocorrelation[..., lag_min:lag_max + 1]
    best_lag = lag_min + searched.argmax(-1)                 # (...,)
    neighbours = torch.stack([best_lag - 1, best_lag, best_lag + 1], -1)
    left, peak, right = autocorrelation.gather(-1, neighbours).unbind(-1)
    period_frames = best_lag + _parabolic_offset(left, peak, right)
    bpm = (60 * frames_per_second / period_frames).clamp(min_bpm, max_bpm)
    return torch.where(has_onsets & (peak > 0), bpm, torch.zeros_like(bpm))


def prosody(wave, *, sample_rate=16000):
    """The five prosody values in PROSODY_NAMES order: (5,) for one wave, (B, 5) for a batch."""
    wave = _as_wave(wave)
    return torch.stack([
        spectral_centroid(wave, sample_rate=sample_rate),
        zero_crossing_rate(wave),
        rms(wave),
        pitch(wave, sample_rate=sample_rate),
        tempo(wave, sample_rate=sample_rate),
    ], -1)
