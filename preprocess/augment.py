"""Waveform augmentation for speech-emotion training (train_av --augment P): the channel changes a model meets
on other recordings, each applied with probability P to a 16 kHz mono float32 wave.

    reverb   a synthetic room: exponentially decaying noise, RT60 0.15-0.8 s, mixed 25-75 % wet
    noise    white or pink (1/f) noise at 5-30 dB SNR
    codec    telephone band (300-3400 Hz) and/or 8-bit mu-law quantisation
    gain     -12 to +6 dB, clipped to [-1, 1] as a recorder would

    rng = np.random.default_rng(0)
    augmented = augment_wave(wave, rng, probability=0.5)   # (S,) float32, same length
"""
import numpy as np

SAMPLE_RATE = 16000


def reverberate(wave, rng, *, sample_rate=SAMPLE_RATE):
    """Convolution with a random exponentially decaying noise impulse response, loudness kept."""
    rt60 = rng.uniform(0.15, 0.8)
    times = np.arange(int(rt60 * sample_rate)) / sample_rate
    response = rng.standard_normal(len(times)) * np.exp(-6.9 * times / rt60)  # -60 dB at rt60
    response[0] = 0.0
    response /= np.sqrt(np.sum(response ** 2)) + 1e-12
    size = 1 << (len(wave) + len(response) - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(response, size), size)[:len(wave)]
    mix = rng.uniform(0.25, 0.75)
    out = (1 - mix) * wave + mix * wet
    return out * (np.sqrt(np.mean(wave ** 2)) / (np.sqrt(np.mean(out ** 2)) + 1e-12))


def add_noise(wave, rng):
    """White or pink noise at a random 5-30 dB signal-to-noise ratio."""
    noise = rng.standard_normal(len(wave))
    if rng.random() < 0.5:  # pink: 1/f power, shaped in the frequency domain
        spectrum = np.fft.rfft(noise)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        noise = np.fft.irfft(spectrum, len(wave))
    snr_db = rng.uniform(5, 30)
    signal_power = np.mean(wave ** 2) + 1e-12
    return wave + noise * np.sqrt(signal_power / (np.mean(noise ** 2) + 1e-12) / 10 ** (snr_db / 10))


def codec(wave, rng, *, sample_rate=SAMPLE_RATE):
    """Telephone band-pass (300-3400 Hz), 8-bit mu-law quantisation, or both."""
    choice = rng.integers(3)
    if choice in (0, 2):
        spectrum = np.fft.rfft(wave)
        frequencies = np.fft.rfftfreq(len(wave), 1 / sample_rate)
        spectrum[(frequencies < 300) | (frequencies > 3400)] = 0
        wave = np.fft.irfft(spectrum, len(wave))
    if choice in (1, 2):
        peak = np.max(np.abs(wave)) + 1e-12
        scaled = np.clip(wave / peak, -1, 1)
        companded = np.sign(scaled) * np.log1p(255 * np.abs(scaled)) / np.log(256)
        quantised = np.round((companded + 1) * 127.5) / 127.5 - 1  # 256 levels
        wave = np.sign(quantised) * np.expm1(np.abs(quantised) * np.log(256)) / 255 * peak
    return wave


def change_gain(wave, rng):
    return np.clip(wave * 10 ** (rng.uniform(-12, 6) / 20), -1, 1)


def augment_wave(wave, rng, *, probability):
    """Each of reverb, noise, codec and gain (in that order) with `probability`; (S,) float32 in and out."""
    wave = np.asarray(wave, dtype=np.float64)
    if len(wave) < 2:
        return wave.astype(np.float32)
    for step in (reverberate, add_noise, codec, change_gain):
        if rng.random() < probability:
            wave = step(wave, rng)
    return wave.astype(np.float32)
