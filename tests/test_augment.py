"""preprocess/augment.py: every channel change keeps the length and dtype and does what it says (SNR within its
range, loudness kept by reverb, nothing outside the telephone band, 256 mu-law levels, clipped gain)."""
import numpy as np
import pytest

from preprocess.augment import add_noise, augment_wave, change_gain, codec, reverberate

SAMPLE_RATE = 16000


def voice(seconds=1.0, seed=0):
    times = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    return 0.1 * sum(np.sin(2 * np.pi * k * 180.0 * times + rng.uniform(0, 6)) for k in range(1, 12))


def test_probability_zero_is_the_identity_and_one_changes_every_wave():
    wave = voice().astype(np.float32)
    unchanged = augment_wave(wave, np.random.default_rng(0), probability=0.0)
    assert unchanged.dtype == np.float32 and np.array_equal(unchanged, wave)
    for seed in range(5):
        changed = augment_wave(wave, np.random.default_rng(seed), probability=1.0)
        assert changed.dtype == np.float32 and changed.shape == wave.shape and np.isfinite(changed).all()
        assert np.abs(changed - wave).max() > 1e-3
    assert augment_wave(np.zeros(1, np.float32), np.random.default_rng(0), probability=1.0).shape == (1,)


@pytest.mark.parametrize("seed", range(6))
def test_noise_lands_between_5_and_30_db_below_the_signal(seed):
    wave = voice()
    noisy = add_noise(wave, np.random.default_rng(seed))
    snr_db = 10 * np.log10(np.mean(wave ** 2) / np.mean((noisy - wave) ** 2))
    assert 5 - 1e-6 <= snr_db <= 30 + 1e-6


@pytest.mark.parametrize("seed", range(4))
def test_reverb_keeps_loudness_and_smears_an_impulse(seed):
    wave = voice()
    wet = reverberate(wave, np.random.default_rng(seed))
    assert np.sqrt(np.mean(wet ** 2)) == pytest.approx(np.sqrt(np.mean(wave ** 2)), rel=1e-6)
    click = np.zeros(SAMPLE_RATE)
    click[100] = 1.0
    tail = reverberate(click, np.random.default_rng(seed))
    assert np.abs(tail[1000:]).max() > 1e-3  # energy 56 ms after the click: a room, not a copy


def test_codec_band_limits_or_quantises():
    wave = voice() + 0.05 * np.sin(2 * np.pi * 6000 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    seen = set()
    for seed in range(30):
        rng = np.random.default_rng(seed)
        choice = np.random.default_rng(seed).integers(3)
        out = codec(wave, rng)
        spectrum = np.abs(np.fft.rfft(out))
        frequencies = np.fft.rfftfreq(len(out), 1 / SAMPLE_RATE)
        if choice in (0, 2):  # nothing above 3400 Hz but the quantisation noise
            assert spectrum[frequencies > 3600].max() < 0.02 * spectrum.max()
        if choice == 1:  # mu-law alone: at most 256 distinct values
            assert len(np.unique(np.round(out, 9))) <= 256
        seen.add(int(choice))
    assert seen == {0, 1, 2}


def test_gain_stays_in_range_and_clips():
    wave = voice()
    for seed in range(10):
        out = change_gain(wave, np.random.default_rng(seed))
        ratio = np.abs(out).max() / np.abs(wave).max()
        assert np.abs(out).max() <= 1.0 and 10 ** (-12 / 20) - 1e-9 <= ratio <= 10 ** (6 / 20) + 1e-9
