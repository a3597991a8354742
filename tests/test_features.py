"""preprocess/features.py on analytic signals: tones, harmonic series, click trains, silence.

Signals are synthesised in float64 and cast to float32, so a steady tone carries no phase-rounding
noise that would read as onsets. Tolerances are tight enough to catch an octave error, a missing
parabolic refinement (a whole-lag pitch is off by up to 1.4% at 440 Hz) or a wrong frequency axis.
"""
import math

import numpy as np
import pytest
import torch
import torchaudio

from preprocess import features

SAMPLE_RATE = 16000


def seconds_of(seconds):
    return torch.arange(round(seconds * SAMPLE_RATE), dtype=torch.float64) / SAMPLE_RATE


def sine(hz, *, seconds=1.0, amplitude=0.5, phase=0.0):
    return (amplitude * torch.sin(2 * math.pi * hz * seconds_of(seconds) + phase)).float()


def harmonic_series(hz, amplitude_by_harmonic, *, seconds=1.0):
    """Sum of sines at k * hz with the given amplitudes {k: a}, peak-normalised to 0.5."""
    time = seconds_of(seconds)
    wave = sum(a * torch.sin(2 * math.pi * k * hz * time) for k, a in amplitude_by_harmonic.items())
    return (0.5 * wave / wave.abs().max()).float()


def click_train(bpm, *, seconds=8.0, offset_seconds=0.0, seed=0):
    """10 ms decaying noise bursts every 60 / bpm seconds."""
    wave = torch.zeros(round(seconds * SAMPLE_RATE))
    generator = torch.Generator().manual_seed(seed)
    decay = torch.exp(-torch.arange(160) / 40)
    beat = 0
    while (start := round((offset_seconds + beat * 60 / bpm) * SAMPLE_RATE)) < len(wave):
        length = min(160, len(wave) - start)
        wave[start:start + length] += 0.5 * torch.randn(length, generator=generator) * decay[:length]
        beat += 1
    return wave


# ---- pitch

@pytest.mark.parametrize("hz", [110.0, 220.0, 440.0])
def test_pitch_of_a_sine(hz):
    assert float(features.pitch(sine(hz), sample_rate=SAMPLE_RATE)) == pytest.approx(hz, rel=0.005)


NYQUIST_HARMONICS = SAMPLE_RATE // 2 // 220
HARMONIC_RICH = {
    "band-limited sawtooth": {k: 1 / k for k in range(1, NYQUIST_HARMONICS + 1)},
    "band-limited pulse, 30 equal harmonics": {k: 1.0 for k in range(1, 31)},
    "missing fundamental, harmonics 2-10": {k: 1.0 for k in range(2, 11)},
}


@pytest.mark.parametrize("name", HARMONIC_RICH)
def test_pitch_of_harmonic_rich_220hz_has_no_octave_error(name):
    wave = harmonic_series(220.0, HARMONIC_RICH[name])
    assert float(features.pitch(wave)) == pytest.approx(220.0, rel=0.01)


def test_pitch_of_naive_pulse_train():
    phase = (220.0 * seconds_of(1.0)) % 1.0
    pulses = (phase < 0.1).float() - 0.1
    assert float(features.pitch(pulses)) == pytest.approx(220.0, rel=0.01)


def test_pitch_is_zero_for_noise_silence_and_short_waves():
    noise = 0.3 * torch.randn(SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    for wave in (noise, torch.zeros(SAMPLE_RATE), torch.zeros(0), sine(220.0, seconds=0.01)):
        assert float(features.pitch(wave)) == 0.0


def test_pitch_batch_matches_one_by_one():
    batch = torch.stack([sine(110.0), torch.zeros(SAMPLE_RATE), sine(330.0)])
    one_by_one = torch.stack([features.pitch(wave) for wave in batch])
    assert torch.allclose(features.pitch(batch), one_by_one)


# ---- tempo

@pytest.mark.parametrize("bpm", [120.0, 90.0])
def test_tempo_of_a_click_train(bpm):
    assert float(features.tempo(click_train(bpm))) == pytest.approx(bpm, rel=0.01)


@pytest.mark.parametrize("bpm", [47.0, 75.0, 138.0, 180.0, 236.0])
def test_tempo_has_no_octave_error_at_non_integer_frame_periods(bpm):
    wave = click_train(bpm, offset_seconds=0.13, seed=int(bpm))
    assert float(features.tempo(wave)) == pytest.approx(bpm, rel=0.01)


def test_tempo_is_zero_for_a_steady_tone_over_faint_noise():
    """The noise bands sit about 83 dB under the tone, so the 80 dB floor hides their flicker."""
    faint_noise = 1e-4 * torch.randn(4 * SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    assert float(features.tempo(sine(440.0, seconds=4.0) + faint_noise)) == 0.0


def test_tempo_is_zero_without_repeated_onsets():
    one_click = torch.zeros(4 * SAMPLE_RATE)
    one_click[SAMPLE_RATE:SAMPLE_RATE + 160] = 0.5
    for wave in (torch.zeros(4 * SAMPLE_RATE), sine(1000.0, seconds=4.0), one_click, torch.zeros(100)):
        assert float(features.tempo(wave)) == 0.0


# ---- rms, zero-crossing rate, spectral centroid

def test_rms_of_a_sine():
    assert float(features.rms(sine(220.0, amplitude=0.7))) == pytest.approx(0.7 / math.sqrt(2), abs=1e-3)


@pytest.mark.parametrize("hz", [100.0, 440.0, 3000.0])
def test_zero_crossing_rate_of_a_sine(hz):
    rate = float(features.zero_crossing_rate(sine(hz, phase=0.1)))
    assert abs(rate - 2 * hz / SAMPLE_RATE) <= 2 / SAMPLE_RATE  # within two crossings a second


@pytest.mark.parametrize("hz", [1000.0, 3000.0])
def test_spectral_centroid_of_a_sine(hz):
    assert float(features.spectral_centroid(sine(hz))) == pytest.approx(hz, rel=0.03)


# ---- silence and degenerate inputs

def test_silence_gives_exact_zeros():
    values = features.prosody(torch.zeros(2 * SAMPLE_RATE))
    assert values.shape == (len(features.PROSODY_NAMES),)
    assert torch.equal(values, torch.zeros(5))
    assert float(features.rms(torch.zeros(SAMPLE_RATE))) == 0.0


@pytest.mark.parametrize("samples", [0, 1, 5, 100, 300, 700])
def test_short_waves_give_finite_features(samples):
    noise = 0.3 * torch.randn(samples, generator=torch.Generator().manual_seed(samples))
    for wave in (noise, torch.zeros(samples)):
        assert torch.isfinite(features.prosody(wave)).all()
        assert torch.isfinite(features.log_mel(wave)).all()
        assert features.mfcc(wave).shape[:1] == (13,)


def test_prosody_batch_and_numpy_input():
    batch = torch.stack([sine(220.0), torch.zeros(SAMPLE_RATE), sine(1000.0, amplitude=0.2)])
    values = features.prosody(batch)
    assert values.shape == (3, 5)
    assert torch.allclose(values, torch.stack([features.prosody(wave) for wave in batch]))
    assert torch.allclose(features.prosody(batch[0].numpy()), values[0])
    assert values[0, features.PROSODY_NAMES.index("pitch_hz")] == pytest.approx(220.0, rel=0.005)


# ---- log-mel and MFCC

def htk_mel_centres_hz(n_mels, f_min, f_max):
    mels = np.linspace(2595 * np.log10(1 + f_min / 700), 2595 * np.log10(1 + f_max / 700), n_mels + 2)[1:-1]
    return 700 * (10 ** (mels / 2595) - 1)


# FV2ES's 128 mels on 257 FFT bins leave the lowest filters empty; torchaudio warns, the shape is still right
@pytest.mark.filterwarnings("ignore:At least one mel filterbank")
def test_log_mel_shapes():
    wave = sine(440.0)                                   # 16000 samples
    assert features.log_mel(wave).shape == (64, 101)
    assert features.log_mel(torch.stack([wave, wave])).shape == (2, 64, 101)
    fv2es = features.log_mel(wave, n_mels=128, win_length=400, hop_length=200)
    assert fv2es.shape == (128, 81)
    assert features.log_mel(torch.zeros(0)).shape == (64, 2)
    assert torch.allclose(features.log_mel(torch.zeros(SAMPLE_RATE)), torch.tensor(math.log(1e-6)))


@pytest.mark.parametrize("f_min, f_max", [(0.0, None), (300.0, 4000.0)])
def test_log_mel_of_1khz_peaks_at_nearest_mel_centre(f_min, f_max):
    log_mels = features.log_mel(sine(1000.0), f_min=f_min, f_max=f_max)
    centres = htk_mel_centres_hz(64, f_min, f_max or SAMPLE_RATE / 2)
    assert int(log_mels.mean(-1).argmax()) == int(np.abs(centres - 1000.0).argmin())


def test_mfcc_shapes():
    wave = sine(440.0)
    assert features.mfcc(wave).shape == (13, 101)
    assert features.mfcc(torch.stack([wave, wave]), n_mfcc=32).shape == (2, 32, 101)


@pytest.mark.parametrize("n_mfcc, n_mels", [(13, 40), (25, 40), (32, 64)])
def test_mfcc_equals_torchaudio_mfcc(n_mfcc, n_mels):
    speechlike = click_train(150.0, seconds=1.0) + harmonic_series(180.0, {1: 1.0, 2: 0.5, 3: 0.3})
    reference = torchaudio.transforms.MFCC(
        sample_rate=SAMPLE_RATE, n_mfcc=n_mfcc, log_mels=True,
        melkwargs={"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": n_mels})
    ours = features.mfcc(speechlike, n_mfcc=n_mfcc, n_mels=n_mels)
    assert torch.allclose(ours, reference(speechlike), atol=1e-4)


def test_transforms_are_cached_per_config():
    features.log_mel(sine(440.0), n_mels=33)
    hits = features._mel_transform.cache_info().hits
    features.log_mel(sine(220.0), n_mels=33)
    assert features._mel_transform.cache_info().hits == hits + 1


def test_speech_bounds_cut_leading_and_trailing_silence():
    speech_bounds = features.speech_bounds
    sample_rate = 16000
    wave = torch.zeros(4 * sample_rate)
    wave[sample_rate:int(2.5 * sample_rate)] = 0.3 * torch.sin(2 * math.pi * 220 * torch.arange(int(1.5 * sample_rate)) / sample_rate)
    wave += 1e-4 * torch.randn(len(wave), generator=torch.Generator().manual_seed(0))  # -70 dB room noise stays out
    start, end = speech_bounds(wave, top_db=35, pad_seconds=0.1)
    assert abs(start - int(0.9 * sample_rate)) <= 400 and abs(end - int(2.6 * sample_rate)) <= 400
    assert speech_bounds(torch.zeros(sample_rate)) == (0, sample_rate)  # silence: keep all
    assert speech_bounds(torch.ones(100)) == (0, 100)  # shorter than one frame
