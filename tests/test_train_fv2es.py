"""train_fv2es.py on tiny IEMOCAP / MOSEI fixtures (tiny dims, a random-weight tiny BERT as the text encoder):
every -mod and --model trains one epoch and tests, --test --ckpt needs no other flag and reproduces the run,
thresholds never see test labels, RepVGG fused == unfused, --predict writes JSON + HTML, the original flags parse."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_fv2es
from preprocess.timeline import read_transcript
from common import InputError
from models.fv2es import AUDIO_SIZES, MME2E, NestedAudioEncoder, VisualCNN
from models.repvgg import FusedRepVGGBlock, RepVGGBlock, fuse_repvgg
from preprocess.fixtures import iemocap as iemocap_fixture, mosei as mosei_fixture
from preprocess.fixtures.fv2es import FILLER
from processes import free_port, kill_after_first_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = ["-ep", "1", "-bs", "6", "--audio-size", "tiny", "--trans-dim", "16", "--trans-nlayers", "1", "--trans-nheads", "2",
        "--device", "cpu", "-hs", "16"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("fv2es")
    iemocap_fixture.make_iemocap(root / "iemocap")
    mosei_fixture.make_mosei(root / "mosei")
    text_model = root / "tiny-bert"
    from transformers import BertConfig, BertModel, BertTokenizerFast
    words = sorted(set(iemocap_fixture.CUE_WORDS.values()) | set(mosei_fixture.CUE_WORDS.values()) | set(FILLER) | {"hmm"})
    text_model.mkdir()
    (text_model / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(text_model / "vocab.txt")).save_pretrained(text_model)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(text_model)
    return {"iemocap": root / "iemocap" / "processed", "mosei": root / "mosei" / "processed", "text": text_model,
            "video": root / "mosei" / "raw" / "Videos" / "vid000a.mp4", "root": root}


def train(trees, tmp_path, *extra, dataset="iemocap"):
    out = tmp_path / "run"
    metrics = train_fv2es.main(["-lr=1e-3", "--data", str(trees[dataset]), "--dataset", dataset, "--text-model", str(trees["text"]),
                                "--out", str(out), "--cache", str(tmp_path / "cache"), *TINY, *extra])
    return out, metrics


def check_metrics(out, metrics, dataset="iemocap"):
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) >= {"valid", "test", "thresholds", "protocol"} and len(saved["thresholds"]) == 6
    assert all(t in np.round(np.arange(0.05, 0.951, 0.05), 2) for t in saved["thresholds"])
    for split in ("valid", "test"):
        report = saved[split]
        assert len(report["per_emotion"]) == 6
        for key in ("mean_accuracy", "mean_precision", "mean_recall", "mean_f1", "mean_auc", "mean_all_positive_f1", "mean_majority_accuracy"):
            assert key in report
        assert ("accuracy_6way" in report and "weighted_f1" in report) == (dataset == "iemocap")
    assert (out / "args.json").is_file() and (out / "split.json").is_file()
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["args"]["modalities"] and state["thresholds"] == saved["thresholds"]
    return saved


@pytest.fixture(scope="module")
def tav_run(trees, tmp_path_factory):
    out, metrics = train(trees, tmp_path_factory.mktemp("tav"), "-mod", "tav")
    return out, metrics


def test_tav_trains_and_test_ckpt_needs_no_other_flag(tav_run):
    out, metrics = tav_run
    saved = check_metrics(out, metrics)
    again = train_fv2es.main(["--test", "--ckpt", str(out / "model.pt")])
    assert again["thresholds"] == saved["thresholds"]
    assert again["test"]["mean_f1"] == pytest.approx(saved["test"]["mean_f1"])
    assert json.loads((out / "evaluation.json").read_text())["test"]["mean_auc"] == pytest.approx(saved["test"]["mean_auc"], nan_ok=True)
    valid_only = train_fv2es.main(["--valid", "--ckpt", str(out / "model.pt")])
    assert "test" not in valid_only and valid_only["valid"]["mean_f1"] == pytest.approx(saved["valid"]["mean_f1"])


@pytest.mark.parametrize("modalities", ["t", "a", "v"])
def test_each_modality_trains_one_epoch_and_tests(trees, tmp_path, modalities):
    out, metrics = train(trees, tmp_path, "-mod", modalities)
    check_metrics(out, metrics)
    state = torch.load(out / "model.pt", weights_only=True)
    assert {key.split(".")[0] for key in state["model"]} - {"heads", "fuse"} == {
        "t": {"text"}, "a": {"audio", "audio_temporal"}, "v": {"visual", "visual_temporal"}}[modalities]


def test_planted_audio_tone_is_learned(trees, tmp_path):
    # each class is a tone 1.25x above the previous one; 6 classes, so chance is 1/6
    _, metrics = train(trees, tmp_path, "-mod", "a", "-ep", "4")
    assert metrics["test"]["accuracy_6way"] >= 0.66, metrics["test"]
    assert metrics["test"]["accuracy_6way"] > metrics["test"]["majority_baseline_accuracy_6way"] + 0.4
    assert metrics["test"]["mean_auc"] > 0.8


@pytest.mark.parametrize("model", ["lf_rnn", "lf_transformer"])
def test_hand_crafted_baselines_train_and_test(trees, tmp_path, model):
    out, metrics = train(trees, tmp_path, "-mo", model, "-mod", "tav", "-bi", "-nl", "1")
    check_metrics(out, metrics)
    again = train_fv2es.main(["--test", "--ckpt", str(out / "model.pt")])
    assert again["test"]["mean_f1"] == pytest.approx(metrics["test"]["mean_f1"])
    state = torch.load(out / "model.pt", weights_only=True)  # a checkpoint whose args use the names older versions saved
    old_names = {"data": "datapath", "lr": "learning_rate", "hidden": "hidden_size", "layers": "num_layers"}
    state["args"] = {old_names.get(key, key): value for key, value in state["args"].items()}
    torch.save(state, tmp_path / "old.pt")
    old = train_fv2es.main(["--test", "--ckpt", str(tmp_path / "old.pt")])
    assert old["test"]["mean_f1"] == pytest.approx(metrics["test"]["mean_f1"])


@pytest.mark.parametrize("flags", [["-mo", "lf_rnn", "--gru", "--fusion", "early", "--loss", "mse", "--optim", "sgd", "-sc", "-cl", "1"],
                                   ["-mo", "lf_transformer", "--loss", "l1", "-wd", "0.01"],
                                   ["-mod", "ta", "--loss", "ce", "--fusion", "early"]])
def test_loss_optimiser_and_fusion_options_run(trees, tmp_path, flags):
    out, metrics = train(trees, tmp_path, *flags, "-ep", "2")
    check_metrics(out, metrics)
    state = torch.load(out / "model.pt", weights_only=True)
    assert ("fuse.weights.weight" in state["model"]) == ("early" not in flags)


def test_text_only_needs_no_frames_or_audio_on_disk(trees, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(trees["iemocap"] / "IEMOCAP_SPLIT", bare / "IEMOCAP_SPLIT")
    (bare / "IEMOCAP_RAW_PROCESSED").mkdir()
    shutil.copy(trees["iemocap"] / "IEMOCAP_RAW_PROCESSED" / "meta.json", bare / "IEMOCAP_RAW_PROCESSED")
    out = tmp_path / "run"
    train_fv2es.main(["-lr", "1e-3", "-mod", "t", "--data", str(bare), "--text-model", str(trees["text"]), "--out", str(out), *TINY])
    assert (out / "metrics.json").is_file()
    with pytest.raises(InputError, match="no faces_L.npy or image_L_"):
        train_fv2es.main(["-lr", "1e-3", "-mod", "v", "--data", str(bare), "--out", str(tmp_path / "v"), *TINY])


def test_mosei_multilabel_and_loso(trees, tmp_path):
    out, metrics = train(trees, tmp_path, "-mod", "ta", dataset="mosei")
    check_metrics(out, metrics, dataset="mosei")
    out, metrics = train(trees, tmp_path / "loso", "-mod", "t", "--protocol", "loso", "--test-session", "1")
    split = json.loads((out / "split.json").read_text())
    assert split["test"] and all(i.startswith("Ses01") for i in split["test"])
    assert not any(i.startswith("Ses01") for i in split["train"] + split["valid"])


def test_thresholds_never_see_test_labels(trees, tav_run, tmp_path):
    out, metrics = tav_run
    split = json.loads((out / "split.json").read_text())
    flipped = tmp_path / "flipped"
    shutil.copytree(trees["iemocap"], flipped)
    meta_path = flipped / "IEMOCAP_RAW_PROCESSED" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for utt_id in split["test"]:  # every test label moved to another class
        meta[utt_id]["label"] = train_fv2es.CLASS_NAMES["iemocap"][(train_fv2es.CLASS_NAMES["iemocap"].index(meta[utt_id]["label"]) + 3) % 6]
    meta_path.write_text(json.dumps(meta))
    moved = train_fv2es.main(["--test", "--ckpt", str(out / "model.pt"), "--data", str(flipped), "--out", str(tmp_path / "eval")])
    assert moved["thresholds"] == metrics["thresholds"]
    assert moved["valid"]["mean_f1"] == pytest.approx(metrics["valid"]["mean_f1"])
    assert moved["test"]["accuracy_6way"] != metrics["test"]["accuracy_6way"]  # the test labels were really read


def test_thresholds_are_the_valid_f1_best_and_metrics_match_sklearn():
    from sklearn.metrics import f1_score, roc_auc_score
    rng = np.random.default_rng(0)
    labels = np.eye(6)[rng.integers(0, 6, 60)]
    scores = np.clip(labels * 0.4 + rng.uniform(0, 0.6, labels.shape), 0, 1)
    thresholds = train_fv2es.choose_thresholds(labels, scores)
    for c in range(6):
        grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
        best = max(f1_score(labels[:, c], scores[:, c] >= t) for t in grid)
        assert f1_score(labels[:, c], scores[:, c] >= thresholds[c]) == pytest.approx(best)
    report = train_fv2es.evaluate(labels, scores, thresholds, train_fv2es.CLASS_NAMES["iemocap"], labels, "iemocap")
    assert report["mean_auc"] == pytest.approx(np.mean([roc_auc_score(labels[:, c], scores[:, c]) for c in range(6)]))
    assert report["accuracy_6way"] == pytest.approx((scores.argmax(1) == labels.argmax(1)).mean())
    assert report["mean_all_positive_accuracy"] == pytest.approx(labels.mean())


def test_visual_cnn_fused_copy_equals_multibranch_in_eval_mode():
    torch.manual_seed(0)
    cnn = VisualCNN(16)
    optimizer = torch.optim.SGD(cnn.parameters(), lr=0.01)
    for _ in range(2):  # non-trivial weights and BN statistics
        cnn(torch.randn(8, 3, 48, 48)).pow(2).mean().backward()
        optimizer.step()
    cnn.eval()
    fused = fuse_repvgg(cnn)
    faces = torch.randn(4, 3, 48, 48)
    assert torch.allclose(cnn(faces), fused(faces), atol=1e-5, rtol=1e-4)
    assert sum(isinstance(m, RepVGGBlock) for m in cnn.modules()) == 5  # the model itself is untouched
    assert sum(isinstance(m, FusedRepVGGBlock) for m in fused.modules()) == 5
    assert not any(isinstance(m, RepVGGBlock) for m in fused.modules())


def test_nested_audio_encoder_shapes_and_paper_blocks():
    chunks = torch.randn(3, 4, 32, 32)
    for size in ("tiny", "cpu"):
        assert NestedAudioEncoder(8, **AUDIO_SIZES[size]).eval()(chunks).shape == (3, 8)
    paper = NestedAudioEncoder(8, **AUDIO_SIZES["paper"])
    assert [level.block_side for level in paper.levels] == [8, 8, 8]
    assert [level.positions.shape[-1] for level in paper.levels] == [128, 256, 512]


def test_ckpt_mod_loads_only_that_modality(trees, tmp_path):
    text_only = MME2E(modalities="t", num_classes=6, trans_dim=16, trans_nlayers=1, trans_nheads=2, audio_size="tiny", text_model=str(trees["text"]))
    full = MME2E(modalities="tav", num_classes=6, trans_dim=16, trans_nlayers=1, trans_nheads=2, audio_size="tiny", text_model=str(trees["text"]))
    loaded = train_fv2es.load_weights(full, text_only.state_dict(), "t")
    assert loaded and all(key.startswith(("text.", "heads.t.")) for key in loaded)
    assert torch.equal(full.heads["t"].weight, text_only.heads["t"].weight)


def test_predict_on_a_fixture_video_with_and_without_transcript(trees, tav_run, tmp_path, capsys):
    out, _ = tav_run
    transcript = tmp_path / "talk.txt"
    transcript.write_text("0.4 1.6 so glad today\n2.0 3.2 it is gross\n")
    result = train_fv2es.main(["--predict", str(trees["video"]), "--transcript", str(transcript), "--ckpt", str(out / "model.pt"),
                               "--out", str(tmp_path / "pred")])
    assert "per second of video" in capsys.readouterr().out
    saved = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [s["text"] for s in saved["segments"]] == ["so glad today", "it is gross"] and saved["fused_repvgg"]
    assert all(0 <= p <= 1 for s in saved["segments"] for p in s["probabilities"].values())
    html = (tmp_path / "pred" / "report.html").read_text()
    assert "data:image/jpeg;base64," in html and "http" not in html.replace('lang="en"', "") and "so glad today" in html
    unfused = train_fv2es.main(["--predict", str(trees["video"]), "--transcript", str(transcript), "--ckpt", str(out / "model.pt"),
                                "--out", str(tmp_path / "pred2"), "--no-fuse"])
    for fast, slow in zip(result["segments"], unfused["segments"]):
        assert fast["probabilities"] == pytest.approx(slow["probabilities"], abs=1e-5)
    windows = train_fv2es.main(["--predict", str(trees["video"]), "--window", "2", "--ckpt", str(out / "model.pt"), "--out", str(tmp_path / "w")])
    assert [(s["start"], s["end"]) for s in windows["segments"]] == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.2)]


def test_original_flags_parse_in_short_and_long_form():
    parser = train_fv2es.build_parser()
    assert parser.parse_args(["-lr=4.5e-6"]).lr == 4.5e-6
    assert parser.parse_args(["-lr", "4.5e-6"]).lr == 4.5e-6
    assert vars(parser.parse_args(["--learning-rate", "1e-4", "--datapath", "D", "--num-layers", "2", "--hidden-size", "8"])) == vars(
        parser.parse_args(["--lr", "1e-4", "--data", "D", "--layers", "2", "--hidden", "8"]))  # the original spellings are aliases
    short = parser.parse_args("-bs 3 -wd 0.1 -ep 5 -es 2 -cu 1 -cl 0.5 -sc -se 7 -mo lf_rnn -hfcs 1 2 3 -aft 0 -mod ta -dr 0.2 -nl 3 -hs 8 -bi "
                              "-st 0.5".split())
    long = parser.parse_args("--batch-size 3 --weight-decay 0.1 --epochs 5 --early-stop 2 --cuda 1 --clip 0.5 --scheduler --seed 7 --model lf_rnn "
                             "--hfc-sizes 1 2 3 --audio-feature-type 0 --modalities ta --dropout 0.2 --num-layers 3 --hidden-size 8 "
                             "--bidirectional --sparse-threshold 0.5".split())
    assert vars(short) == vars(long)
    text = parser.format_help()
    for flag in ("--loss", "--optim", "--text-lr-factor", "--text-model-size", "--fusion", "--feature-dim", "--trans-dim", "--num-emotions",
                 "--img-interval", "--hand-crafted", "--text-max-len", "--valid", "--test", "--ckpt", "--ckpt-mod", "--gru", "--predict"):
        assert flag in text
    assert "Deviations from the original" in text and "was required" in text


def test_bad_input_is_one_clear_error(trees, tmp_path):
    with pytest.raises(InputError, match="needs -lr"):
        train_fv2es.main(["--data", str(trees["iemocap"]), "--out", str(tmp_path / "x")])
    with pytest.raises(InputError, match="-mod tx"):
        train_fv2es.main(["-lr", "1", "-mod", "tx", "--data", str(trees["iemocap"])])
    with pytest.raises(InputError, match="meta.json or meta.pkl"):
        train_fv2es.main(["-lr", "1", "--data", str(tmp_path), "--out", str(tmp_path / "x")])
    bad = tmp_path / "t.txt"
    bad.write_text("zero one hello\n")
    with pytest.raises(InputError, match="t.txt:1: expected `start end text`"):
        read_transcript(bad)


def test_kill_and_resume_gives_the_uninterrupted_result(trees, tmp_path):
    """kill -9 once the first epoch's last.pt exists, --resume, and land on the metrics of one clean run."""
    command = [sys.executable, "train_fv2es.py", "-lr=1e-3", "--data", str(trees["iemocap"]), "--cache", str(tmp_path / "cache"),
               *TINY, "-mod", "a", "-ep", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "--out", str(tmp_path / "clean")], check=True, cwd=ROOT, capture_output=True, env=env)
    interrupted = tmp_path / "interrupted"
    kill_after_first_checkpoint([*command, "--out", str(interrupted)], interrupted, env=env, timeout_s=60)
    subprocess.run([*command, "--out", str(interrupted), "--resume"], check=True, cwd=ROOT, capture_output=True, env=env)
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    resumed = json.loads((interrupted / "metrics.json").read_text())
    assert resumed["thresholds"] == clean["thresholds"] and resumed["test"] == clean["test"]


def test_ddp_on_two_cpu_processes(trees, tmp_path):
    port = free_port()
    out = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "train_fv2es.py",
                             "-lr=1e-3", "--data", str(trees["iemocap"]), "--cache", str(tmp_path / "cache"), "--out", str(out), *TINY,
                             "-mod", "ta", "--text-model", str(trees["text"])],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    check_metrics(out, json.loads((out / "metrics.json").read_text()))
