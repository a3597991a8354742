"""train_av.py on a tiny synthetic RAVDESS tree: every -mod trains and predicts, the planted signal is
learned, twins share a split, bad names are reported, manifests and wav2vec2-from-a-folder work."""
import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_av
from common import InputError
from models.av_emotion import AUDIO_ENCODERS, MelEncoder, standardise_log_mels
from preprocess.features import log_mel
from preprocess.fixtures.ravdess import make_ravdess
from processes import kill_after_first_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "2", "--batch-size", "8", "--frame-size", "32", "--video-fps", "5", "--video-frames", "4",
        "--test-actors", "6", "--val-actors", "5"]


@pytest.fixture(scope="module")
def ravdess(tmp_path_factory):
    root = tmp_path_factory.mktemp("ravdess")
    make_ravdess(root, actors=(1, 2, 3, 4, 5, 6), seed=0)
    return root


def run(ravdess, tmp_path, *extra):
    out = tmp_path / "run"
    metrics = train_av.main(["--data", str(ravdess), "--out", str(out), "--cache", str(tmp_path / "cache"), *FAST, *extra])
    return out, metrics


@pytest.mark.parametrize("modalities", ["a", "v", "av"])
def test_every_modality_trains_and_predicts(ravdess, tmp_path, modalities):
    out, metrics = run(ravdess, tmp_path, "-mod", modalities)
    for name in ("args.json", "split.json", "failures.csv", "model.pt", "last.pt", "metrics.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "weighted_f1", "per_class_f1", "confusion_matrix", "majority_baseline_accuracy"):
        assert key in saved["test"] and key in saved["val"]
    assert saved["test"]["n"] == 15 and saved["test"]["groups"] == ["06"]
    clip = next((ravdess / "Actor_06").glob("01-*.mp4"))
    [prediction] = train_av.main(["--predict", str(clip), "--ckpt", str(out / "model.pt")])
    assert prediction["prediction"] in train_av.EMOTIONS
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    state = torch.load(out / "model.pt", weights_only=True)  # a checkpoint saved while --video-frames was --max-frames
    state["args"]["max_frames"] = state["args"].pop("video_frames")
    torch.save(state, tmp_path / "old.pt")
    assert train_av.main(["--predict", str(clip), "--ckpt", str(tmp_path / "old.pt")]) == [prediction]


@pytest.mark.parametrize("modalities", ["a", "v"])
def test_planted_signal_is_learned(ravdess, tmp_path, modalities):
    # the planted audio cue is a steady tone at an absolute frequency one mel bin per class apart: the bin-shift
    # augmentation and --mel-norm bin (both meant to remove a speaker's steady spectrum) would erase it
    _, metrics = run(ravdess, tmp_path, "-mod", modalities, "--epochs", "20", "--max-bin-shift", "0", "--mel-norm", "clip")
    # 8 classes: chance is 1/8; the planted tone / hue separates them
    assert metrics["test"]["accuracy"] >= 0.6, metrics["test"]
    assert metrics["test"]["accuracy"] > metrics["test"]["majority_baseline_accuracy"] + 0.3


def test_twins_share_a_trial_and_splits_are_actor_disjoint(ravdess, tmp_path):
    out, _ = run(ravdess, tmp_path, "-mod", "a", "--epochs", "1")
    split = json.loads((out / "split.json").read_text())
    keys = {part: set(split[part]["trials"]) for part in ("train", "val", "test")}
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    assert {"01", "02", "03", "04"} == set(split["train"]["groups"])
    # the AV file, its silent twin and the wav of one performance are one trial key
    for av_file in (ravdess / "Actor_02").glob("01-*.mp4"):
        twin_key = "-".join(av_file.stem.split("-")[1:])
        assert (av_file.parent / f"02-{twin_key}.mp4").is_file()
        assert twin_key in keys["train"]
    assert sum(len(k) for k in keys.values()) == 6 * 15


def test_a_tree_of_linked_actor_folders_trains(ravdess, tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    for actor in sorted(ravdess.glob("Actor_*")):
        (linked / actor.name).symlink_to(actor, target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)  # a link loop ends
    out, metrics = run(linked, tmp_path, "-mod", "a")
    split = json.loads((out / "split.json").read_text())
    assert metrics["test"]["n"] == 15 and metrics["test"]["groups"] == ["06"]
    assert sum(len(split[part]["trials"]) for part in ("train", "val", "test")) == 6 * 15  # each trial once, though reachable twice
    assert json.loads((out / "args.json").read_text())["args"]["data"] == str(linked)


def test_folds_are_actor_disjoint_and_pooled(ravdess, tmp_path):
    out = tmp_path / "folds"
    metrics = train_av.main(["--data", str(ravdess), "--out", str(out), "--cache", str(tmp_path / "cache"),
                             "-mod", "a", "--folds", "3", "--epochs", "1", "--batch-size", "16"])
    tested = []
    for fold in ("fold_1", "fold_2", "fold_3"):
        split = json.loads((out / fold / "split.json").read_text())
        assert not set(split["test"]["groups"]) & set(split["train"]["groups"])
        assert not set(split["val"]["groups"]) & set(split["train"]["groups"])
        tested += split["test"]["groups"]
    assert sorted(tested) == ["01", "02", "03", "04", "05", "06"]
    assert metrics["test"]["n"] == 6 * 15


def test_folds_without_validation_train_on_every_other_actor(ravdess, tmp_path):
    out = tmp_path / "folds"
    metrics = train_av.main(["--data", str(ravdess), "--out", str(out), "--cache", str(tmp_path / "cache"),
                             "-mod", "a", "--folds", "3", "--val-actors", "none", "--epochs", "1", "--batch-size", "16"])
    actors = {"01", "02", "03", "04", "05", "06"}
    for fold in ("fold_1", "fold_2", "fold_3"):
        split = json.loads((out / fold / "split.json").read_text())
        assert split["val"]["groups"] == [] and set(split["train"]["groups"]) == actors - set(split["test"]["groups"])
        assert "last epoch, no validation split" in metrics["folds"][fold]["protocol"]
    assert metrics["test"]["n"] == 6 * 15


def test_without_validation_the_last_epoch_is_kept(ravdess, tmp_path):
    import torch
    out, metrics = run(ravdess, tmp_path, "-mod", "a", "--val-actors", "none")
    assert "last epoch, no validation split" in metrics["protocol"] and "val" not in metrics
    assert torch.load(out / "model.pt", weights_only=True)["epoch"] == 1
    assert json.loads((out / "split.json").read_text())["train"]["groups"] == ["01", "02", "03", "04", "05"]


def test_malformed_names_are_reported_not_guessed(ravdess, tmp_path):
    data = tmp_path / "data"
    subprocess.run(["cp", "-r", str(ravdess), str(data)], check=True)
    (data / "Actor_01" / "notes.wav").write_bytes(b"")
    (data / "Actor_01" / "03-01-09-01-01-01-01.wav").write_bytes(b"")  # emotion 09 does not exist
    (data / "Actor_01" / "03-01-01-01-01-01-02.wav").write_bytes(b"")  # actor 02 inside Actor_01
    (data / "Actor_02" / "01-01-01-01-01-01-02.mp4").unlink()  # leaves this trial only its silent twin
    (data / "Actor_02" / "03-01-01-01-01-01-02.wav").unlink()
    out, _ = run(data, tmp_path, "-mod", "a", "--epochs", "1")
    with open(out / "failures.csv") as file:
        problems = {Path(row["item"]).name: row["problem"] for row in csv.DictReader(file)}
    assert "not a RAVDESS name" in problems["notes.wav"]
    assert "unknown emotion code 09" in problems["03-01-09-01-01-01-01.wav"]
    assert "folder Actor_01" in problems["03-01-01-01-01-01-02.wav"]
    assert problems["01-01-01-01-01-02"] == "01-01-01-01-01-02: no audio file for this trial"


def test_manifest_trains_on_any_labelled_files(ravdess, tmp_path):
    manifest = tmp_path / "clips.csv"
    with open(manifest, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "label", "group"])
        for wav in sorted(ravdess.glob("Actor_0*/03-*.wav")):
            label = "high" if int(wav.stem.split("-")[2]) >= 5 else "low"
            writer.writerow([str(wav), label, f"speaker{wav.parent.name[-1]}"])
    out = tmp_path / "manifest-run"
    metrics = train_av.main(["--manifest", str(manifest), "--out", str(out), "--cache", str(tmp_path / "cache"),
                             "-mod", "a", "--epochs", "2", "--test-groups", "speaker6", "--val-groups", "speaker5"])
    assert metrics["test"]["groups"] == ["speaker6"] and set(metrics["test"]["per_class_f1"]) == {"high", "low"}


def test_wav2vec2_from_a_local_folder(ravdess, tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    model_dir = tmp_path / "tiny-wav2vec2"
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True)
    Wav2Vec2Model(config).save_pretrained(model_dir)
    out, metrics = run(ravdess, tmp_path, "-mod", "a", "--audio-encoder", "wav2vec2", "--audio-model", str(model_dir),
                       "--audio-trainable-layers", "1", "--epochs", "1")
    assert (out / "model.pt").is_file() and "test" in metrics


def test_kill_and_resume_gives_the_uninterrupted_result(ravdess, tmp_path):
    """kill -9 after the first epoch's checkpoint, --resume, and land on the same metrics as one clean run."""
    command = [sys.executable, "train_av.py", "--data", str(ravdess), "--cache", str(tmp_path / "cache"), *FAST,
               "-mod", "a", "--epochs", "3", "--trim-db", "35", "--mixup", "0.4", "--ema", "0.9"]  # numpy RNG and EMA resume too
    subprocess.run([*command, "--out", str(tmp_path / "clean")], check=True, cwd=ROOT, capture_output=True)
    interrupted = tmp_path / "interrupted"
    kill_after_first_checkpoint([*command, "--out", str(interrupted)], interrupted, timeout_s=120)
    subprocess.run([*command, "--out", str(interrupted), "--resume"], check=True, cwd=ROOT, capture_output=True)
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    resumed = json.loads((interrupted / "metrics.json").read_text())
    assert resumed["val"] == clean["val"] and resumed["test"] == clean["test"]
    with pytest.raises(InputError, match="--resume needs"):
        train_av.main([*command[2:], "--out", str(interrupted), "--resume", "--epochs", "5"])



@pytest.mark.parametrize("per_bin", [True, False])
def test_log_mel_standardisation_uses_real_frames_only(per_bin):
    torch.manual_seed(0)
    frame_counts = torch.tensor([50, 17])
    log_mels = torch.randn(2, 8, 50) * 3 + torch.linspace(-5, 5, 8)[None, :, None]  # (B, M, F), a spectral tilt
    log_mels[1, :, 17:] = 1e6  # padding: must not count and must come out 0
    out = standardise_log_mels(log_mels, frame_counts, per_bin=per_bin)
    assert torch.equal(out[1, :, 17:], torch.zeros(8, 33))
    for row, count in enumerate(frame_counts.tolist()):
        real = out[row, :, :count].double()
        if per_bin:  # every bin: mean 0, std 1
            torch.testing.assert_close(real.mean(1), torch.zeros(8, dtype=torch.float64), atol=1e-5, rtol=0)
            torch.testing.assert_close(real.std(1, unbiased=False), torch.ones(8, dtype=torch.float64), atol=1e-4, rtol=0)
        else:  # the clip as a whole: mean 0, std 1, the tilt kept
            assert abs(real.mean()) < 1e-5 and abs(real.std(unbiased=False) - 1) < 1e-4
            assert real.mean(1)[-1] - real.mean(1)[0] > 1.0


def test_per_bin_standardisation_removes_a_speakers_steady_spectrum():
    """The same utterance with a constant per-bin offset and gain (a vocal-tract / channel colouring) standardises
    to the same array per bin, not per clip."""
    torch.manual_seed(0)
    utterance, frame_counts = torch.randn(1, 8, 40), torch.tensor([40])
    coloured = utterance * torch.linspace(0.5, 2.0, 8)[None, :, None] + torch.linspace(-4, 4, 8)[None, :, None]
    torch.testing.assert_close(standardise_log_mels(coloured, frame_counts, per_bin=True),
                               standardise_log_mels(utterance, frame_counts, per_bin=True), atol=1e-4, rtol=0)
    assert not torch.allclose(standardise_log_mels(coloured, frame_counts, per_bin=False),
                              standardise_log_mels(utterance, frame_counts, per_bin=False), atol=1e-2)


def test_mel_norm_reaches_the_encoder_and_old_checkpoints_keep_the_per_clip_normalisation():
    settings = vars(train_av.build_parser().parse_args(["--data", "x", "-mod", "a", "--mel-norm", "bin"]))
    assert train_av.build_model(settings, 8).audio.norm == "bin"
    del settings["mel_norm"]  # a checkpoint's args written before the flag existed
    assert train_av.build_model(settings, 8).audio.norm == "clip"


def test_a_50_ms_window_resolves_the_harmonics_of_a_voice_that_25_ms_blurs():
    """A 150-Hz voice-like harmonic series: with --mel-window-ms 50 (FFT 1024) the mel bins at its 3rd-5th
    harmonics stand far above the bins halfway between them; with 25 ms (FFT 512) the dips fill in."""
    seconds = torch.arange(16000) / 16000
    wave = 0.05 * sum(torch.sin(2 * math.pi * k * 150.0 * seconds) for k in range(1, 11))
    mels = np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 130)[1:-1]
    centres_hz = 700 * (10 ** (mels / 2595) - 1)  # HTK mel filter centres, 128 bins up to 8 kHz
    nearest = lambda hz: int(np.argmin(abs(centres_hz - hz)))
    contrast = {}
    for window_ms in (25, 50):
        encoder = MelEncoder(n_mels=128, window_ms=window_ms)
        spectrum = log_mel(wave, n_mels=128, n_fft=encoder.n_fft, win_length=encoder.win_length, hop_length=160).mean(-1).numpy()
        contrast[window_ms] = [spectrum[nearest(k * 150.0)] - spectrum[nearest((k + 0.5) * 150.0)] for k in (3, 4, 5)]
    assert (MelEncoder(window_ms=25).n_fft, MelEncoder(window_ms=50).n_fft) == (512, 1024)
    assert min(contrast[50]) > max(contrast[25]) + 2, contrast
    old = argparse.Namespace(n_mels=64, max_bin_shift=3, mel_norm="clip")  # a checkpoint from before the flag: 25 ms
    assert AUDIO_ENCODERS["mel"](old).win_length == 400


def test_mixup_blends_inputs_targets_and_lengths():
    import torch
    batch = {"label": torch.tensor([0, 1]), "audio": torch.tensor([[1.0, 1.0, 0.0], [3.0, 3.0, 3.0]]), "audio_lengths": torch.tensor([2, 3]),
             "frames": torch.tensor([[[0]], [[200]]], dtype=torch.uint8), "frame_lengths": torch.tensor([1, 1])}
    targets = torch.eye(2)
    torch.manual_seed(0)
    while True:  # a draw that swaps the two rows
        mixed, mixed_targets = train_av.mix_batch(batch, targets, 0.75)
        if mixed_targets[0, 1] > 0:
            break
    assert torch.allclose(mixed["audio"][0], torch.tensor([1.5, 1.5, 0.75])) and mixed["audio_lengths"].tolist() == [3, 3]
    assert mixed["frames"].dtype == torch.uint8 and mixed["frames"][0].item() == 50
    assert torch.allclose(mixed_targets, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    assert torch.equal(train_av.mix_batch(batch, targets, 1.0)[0]["audio"], batch["audio"])


def test_bad_input_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "train_av.py", "--data", str(tmp_path / "missing"), "-mod", "a"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: RAVDESS folder not found"]
    with pytest.raises(InputError, match="no audio stream"):
        clip = tmp_path / "silent.mp4"
        from preprocess.fixtures.writers import solid_frame, write_video
        write_video(clip, [solid_frame(32, 32, (10, 20, 30))] * 5, fps=5)
        train_av.main(["--predict", str(clip), "--ckpt", str(make_audio_checkpoint(tmp_path))])


def make_audio_checkpoint(tmp_path):
    from common import save_checkpoint
    args = vars(train_av.build_parser().parse_args(["--data", "x", "-mod", "a"]))
    model = train_av.build_model(args, 8)
    return save_checkpoint(tmp_path / "model.pt", {"model": model.state_dict(), "args": args, "class_names": list(train_av.EMOTIONS)})


def test_speaker_statistics_are_the_per_bin_moments_of_all_the_speakers_frames():
    torch.manual_seed(0)
    encoder = MelEncoder(n_mels=16, window_ms=25)
    waves = [torch.randn(8000) * 0.1, torch.randn(12000) * 0.3]
    stats = encoder.speaker_statistics(waves)
    frames = []
    for wave in waves:  # brute force: each clip standardised as a whole, then every real frame pooled
        mels = log_mel(wave, n_mels=16, n_fft=encoder.n_fft, win_length=encoder.win_length, hop_length=160)
        frames.append((mels - mels.mean()) / (mels.std(unbiased=False) + 1e-5))
    frames = torch.cat(frames, dim=1).double()
    torch.testing.assert_close(stats.double(), torch.stack([frames.mean(1), frames.std(1, unbiased=False)]), atol=1e-4, rtol=1e-4)


def test_speaker_normalisation_removes_a_speakers_steady_colouring():
    """One clip per speaker, the second speaker's spectrum scaled and shifted per mel bin: after normalising each by
    their own statistics the encoder sees the same log-mels, and padding stays 0."""
    torch.manual_seed(0)
    encoder = MelEncoder(n_mels=16, window_ms=25).eval()
    log_mels = torch.randn(1, 16, 40)
    coloured = log_mels * torch.linspace(0.5, 2.0, 16)[None, :, None] + torch.linspace(-3, 3, 16)[None, :, None]
    seen = []
    for mels in (log_mels, coloured):
        clip = standardise_log_mels(mels, torch.tensor([40]), per_bin=False)[0]
        stats = torch.stack([clip.mean(1), clip.std(1)])[None]  # (1, 2, M) this speaker's statistics
        encoder.clip_log_mels = lambda waves, lengths, mels=mels: (standardise_log_mels(torch.cat([mels, torch.full((1, 16, 10), 9.0)], 2), torch.tensor([40]), per_bin=False), torch.tensor([40]))
        captured = {}
        encoder.cnn_2d.register_forward_pre_hook(lambda module, inputs: captured.setdefault("x", inputs[0].clone()))
        encoder(torch.zeros(1, 100), torch.tensor([100]), stats)
        seen.append(captured["x"][0, 0])
        encoder.cnn_2d._forward_pre_hooks.clear()
    torch.testing.assert_close(seen[0], seen[1], atol=1e-4, rtol=0)
    assert torch.equal(seen[0][:, 40:], torch.zeros(16, 10))


def test_speaker_norm_and_augmentation_train_and_predict(ravdess, tmp_path):
    out, metrics = run(ravdess, tmp_path, "-mod", "a", "--epochs", "1", "--augment", "0.5")
    assert metrics["test"]["n"] == 15
    clip = next((ravdess / "Actor_06").glob("01-*.mp4"))
    [prediction] = train_av.main(["--predict", str(clip), "--ckpt", str(out / "model.pt")])
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert json.loads((out / "args.json").read_text())["args"]["speaker_norm"] is True
    other, _ = run(ravdess, tmp_path / "v", "-mod", "v", "--epochs", "1")  # on by default, only the mel encoder uses it
    assert json.loads((other / "args.json").read_text())["args"]["speaker_norm"] is False


def test_speaker_moments_start_from_the_prior_and_weigh_it_as_frames():
    from models.av_emotion import SpeakerMoments
    torch.manual_seed(0)
    encoder = MelEncoder(n_mels=16, window_ms=25)
    prior = torch.stack([torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16)])
    moments = SpeakerMoments(prior, prior_frames=100)
    torch.testing.assert_close(moments.current(), prior, atol=1e-6, rtol=0)
    wave = torch.randn(1, 16000) * 0.1
    seen = encoder.speaker_statistics([wave[0]])  # this wave alone
    frames = int(encoder.clip_log_mels(wave, torch.tensor([16000]))[1])
    mixed = moments.update(*encoder.clip_log_mels(wave, torch.tensor([16000])))
    expected_mean = (100 * prior[0] + frames * seen[0]) / (100 + frames)
    expected_square = (100 * (prior[1] ** 2 + prior[0] ** 2) + frames * (seen[1] ** 2 + seen[0] ** 2)) / (100 + frames)
    torch.testing.assert_close(mixed, torch.stack([expected_mean, (expected_square - expected_mean ** 2).sqrt()]), atol=1e-4, rtol=1e-4)


def test_timeline_speaker_norm_computes_each_log_mel_once(monkeypatch):
    """The timeline's --speaker-norm windows: one log-mel per batch serves both the file's running statistics (from the
    spoken windows only) and the model, with the probabilities of the two computed apart."""
    import models.av_emotion as av_emotion
    from models.av_emotion import AVEmotionClassifier, SpeakerMoments
    from preprocess.timeline import SpeechEmotion, evaluation_wave, padded_batch
    torch.manual_seed(0)
    model = AVEmotionClassifier(modalities="a", num_classes=3, audio_encoder=MelEncoder(n_mels=16)).eval()
    prior = torch.stack([torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16)])
    settings = {"trim_db": 0, "max_audio_seconds": 60, "speaker_norm": True}
    speech = SpeechEmotion(model, ["a", "b", "c"], settings, speaker_prior=prior)
    waves = [torch.randn(16000) * 0.1, torch.randn(12000) * 0.3]
    calls, real_log_mel = [], av_emotion.log_mel
    monkeypatch.setattr(av_emotion, "log_mel", lambda *args, **kwargs: calls.append(1) or real_log_mel(*args, **kwargs))
    probabilities = speech.classify(waves, spoken=[True, False])
    assert len(calls) == 1
    batch, lengths = padded_batch([evaluation_wave(w, trim_db=0, max_seconds=60) for w in waves])
    stats = SpeakerMoments(prior).update(*model.audio.clip_log_mels(batch[:1], lengths[:1]))  # the spoken window only
    with torch.no_grad():
        expected = model({"audio": batch, "audio_lengths": lengths, "speaker_stats": stats[None].expand(2, -1, -1)}).softmax(-1)
    np.testing.assert_allclose(probabilities, expected.numpy(), atol=1e-5)
