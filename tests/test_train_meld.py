"""train_meld.py on a tiny synthetic MELD tree with a tiny random BERT as sentence encoder (offline): every
modality combination trains and evaluates, the planted text/audio cues are learned, bad clips are listed,
no test row reaches training, and the CSV/entropy/pooling helpers behave."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

import train_meld
from common import run_main
from models.meld_emotion import JointTextClassifier, SentenceEncoder
from preprocess.fixtures.meld import FIXTURE_WORDS, make_meld
from preprocess.meld import EMOTIONS, find_clip, frame_entropy, parse_time, read_split, top_entropy_frames
from preprocess.timeline import TextEmotion

SMALL = ["--hidden", "16", "--d-model", "32", "--heads", "4", "--frame-size", "32", "--video-fps", "5", "--video-frames", "3",
         "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    root = tmp_path_factory.mktemp("meld")
    make_meld(root, seed=0)
    return root


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    """A random-weight 1-layer BERT (hidden 128) and a WordPiece tokenizer over the fixture's words, laid out as a
    sentence-transformers folder with mean pooling (modules.json, 1_Pooling/config.json), as all-MiniLM-L6-v2."""
    from transformers import BertConfig, BertModel, BertTokenizer
    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(FIXTURE_WORDS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                                                     {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # shared: each clip's features are computed once per module


def run(meld, text_encoder, cache, out, *extra):
    return train_meld.main(["--data", str(meld), "--text-model", str(text_encoder), "--cache", str(cache),
                            "--out", str(out), *SMALL, *extra])


@pytest.mark.parametrize("modalities", train_meld.MODALITIES)
def test_every_modality_combination_trains_and_evaluates(meld, text_encoder, cache, tmp_path, modalities):
    metrics = run(meld, text_encoder, cache, tmp_path / "run", "-mod", modalities, "--epochs", "2")
    for name in ("args.json", "split.json", "failures.csv", "model.pt", "last.pt", "metrics.json"):
        assert (tmp_path / "run" / name).is_file(), name
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("dev", "test"):
        for key in ("weighted_f1", "accuracy", "macro_f1", "per_class_f1", "confusion_matrix", "majority_baseline_weighted_f1"):
            assert key in saved[split]
        assert saved[split]["majority_source"] == "train"
    uses_clips = modalities != "t"
    assert saved["test"]["n"] == len(read_split(meld, "test"))
    assert saved["dev"]["n"] == len(read_split(meld, "dev")) - uses_clips  # dev dia0_utt0's clip is corrupt
    assert metrics["dev"] == saved["dev"]


@pytest.mark.parametrize("modalities", ["t", "a"])
def test_planted_signal_is_learned(meld, text_encoder, cache, tmp_path, modalities):
    metrics = run(meld, text_encoder, cache, tmp_path / "run", "-mod", modalities, "--context", "none",
                  "--epochs", "30", "--lr", "3e-3", "--dropout", "0.1")
    for split in ("dev", "test"):  # 7 classes: chance ~0.14; the cue word / tone separates them
        assert metrics[split]["accuracy"] >= 0.6, (split, metrics[split])
        assert metrics[split]["weighted_f1"] > metrics[split]["majority_baseline_weighted_f1"] + 0.3


def test_joint_text_model_learns_the_planted_words_and_trains_its_encoder(meld, text_encoder, cache, tmp_path):
    """--text-joint: the encoder is trained with the dialogue model (its layers move, the word embeddings do not),
    the planted cue words are learned, and model.pt holds the encoder and loads weights-only."""
    metrics = run(meld, text_encoder, cache, tmp_path / "run", "-mod", "t", "--text-joint", "--context", "none", "--epochs", "15",
                  "--lr", "3e-3", "--text-finetune-lr", "1e-3", "--dropout", "0.1")
    for split in ("dev", "test"):
        assert metrics[split]["accuracy"] >= 0.6, (split, metrics[split])
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["model"]
    before = SentenceEncoder(text_encoder).model.state_dict()
    assert torch.equal(state["encoder.model.embeddings.word_embeddings.weight"], before["embeddings.word_embeddings.weight"])
    assert not torch.allclose(state["encoder.model.encoder.layer.0.output.dense.weight"], before["encoder.layer.0.output.dense.weight"])
    assert any(key.startswith("classifier.lstms.t.") for key in state)
    probabilities = TextEmotion(tmp_path / "run" / "model.pt")(["Great today!", "So hate that."])  # the highlight timeline's reader
    assert [EMOTIONS[row.argmax()] for row in probabilities] == ["joy", "anger"]


def test_joint_text_model_matches_its_parts(text_encoder):
    """JointTextClassifier = TextEncoder (normalised, times sqrt(hidden)) padded per dialogue -> MELDEmotionClassifier,
    whatever order the utterances are encoded in."""
    torch.manual_seed(0)
    joint = JointTextClassifier(text_encoder, chunk=2, hidden=8, d_model=16, heads=2, dropout=0.0).eval()
    dialogues = [["joy joy", "anger", "fear sadness neutral"], ["surprise"]]
    lengths = torch.tensor([3, 1])
    encoder = SentenceEncoder(text_encoder)
    with torch.no_grad():
        vectors = [encoder.embed(texts) * 128 ** 0.5 for texts in dialogues]  # hidden 128
        padded = torch.zeros(2, 3, 128)
        padded[0], padded[1, :1] = vectors[0], vectors[1]
        expected = joint.classifier({"t": padded}, lengths)
        torch.testing.assert_close(joint({"t": dialogues}, lengths), expected, atol=1e-5, rtol=1e-5)


def test_joint_text_model_flags_are_checked(meld, text_encoder, tmp_path, capsys):
    for extra in (["-mod", "ta"], ["--text-finetune-epochs", "1"], ["--text-context", "1"]):
        with pytest.raises(SystemExit):
            run_main(lambda: run(meld, text_encoder, tmp_path / "cache", tmp_path / "run", "--text-joint", *extra))
        assert "--text-joint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main(lambda: train_meld.main(["--data", str(meld), "--text-joint", "--out", str(tmp_path / "bare")]))
    assert "--text-model DIR" in capsys.readouterr().err


def test_missing_and_corrupt_clips_are_listed_and_skipped(meld, text_encoder, cache, tmp_path):
    run(meld, text_encoder, cache, tmp_path / "run", "-mod", "ta", "--epochs", "1")
    with open(tmp_path / "run" / "failures.csv", newline="") as file:
        problems = {row["item"]: row["problem"] for row in csv.DictReader(file)}
    assert set(problems) == {"train/dia1_utt1", "dev/dia0_utt0"}
    assert "no dia1_utt1.mp4" in problems["train/dia1_utt1"]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert "train/dia1_utt1" not in split["train"] and "dev/dia0_utt0" not in split["dev"]
    run(meld, text_encoder, cache, tmp_path / "text", "-mod", "t", "--epochs", "1")  # text needs no clips
    assert "train/dia1_utt1" in json.loads((tmp_path / "text" / "split.json").read_text())["train"]


def test_no_test_row_reaches_training(meld, text_encoder, cache, tmp_path, monkeypatch):
    trained, svm_fitted = set(), []
    real_batches, real_fit = train_meld.training_batches, train_meld.fit_svm

    def recording_batches(*args, **kwargs):
        for batch in real_batches(*args, **kwargs):
            trained.update(key for keys in batch[3] for key in keys)
            yield batch

    def recording_fit(keys, *args):
        svm_fitted.extend(keys)
        return real_fit(keys, *args)

    monkeypatch.setattr(train_meld, "training_batches", recording_batches)
    monkeypatch.setattr(train_meld, "fit_svm", recording_fit)
    metrics = run(meld, text_encoder, cache, tmp_path / "run", "-mod", "tav", "--epochs", "2", "--svm")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    # dialogue ids restart at 0 in every split, so the keys carry the split name
    assert {key.split("/")[1] for key in split["test"]} & {key.split("/")[1] for key in split["train"]}
    assert trained == set(split["train"]) == set(svm_fitted)
    assert not trained & (set(split["test"]) | set(split["dev"]))
    assert {"dev", "test"} <= set(metrics["svm"])


def test_train_and_dev_only(meld, text_encoder, cache, tmp_path, capsys):
    data = tmp_path / "meld"
    shutil.copytree(meld, data)
    (data / "test_sent_emo.csv").unlink()
    metrics = run(data, text_encoder, cache, tmp_path / "run", "-mod", "t", "--epochs", "1")
    assert "test" not in metrics and "test" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test split is skipped" in capsys.readouterr().out


def test_ensemble_members_are_the_seeded_runs_and_their_mean_is_scored(meld, text_encoder, cache, tmp_path):
    """--ensemble 2 --seed 5: member_2 is the run --seed 6 would make (its own fine-tuning), and the ensemble's
    dev/test scores are those of the mean of the members' saved probabilities."""
    flags = ["-mod", "t", "--epochs", "2", "--text-finetune-epochs", "1", "--text-finetune-lr", "1e-3"]
    metrics = run(meld, text_encoder, cache, tmp_path / "ensemble", *flags, "--ensemble", "2", "--seed", "5")
    single = run(meld, text_encoder, cache, tmp_path / "single", *flags, "--seed", "6")
    members = [np.load(tmp_path / "ensemble" / f"member_{k}" / "predictions.npz") for k in (1, 2)]
    alone = np.load(tmp_path / "single" / "predictions.npz")
    np.testing.assert_allclose(members[1]["dev_probabilities"], alone["dev_probabilities"], atol=1e-6)
    assert not np.allclose(members[0]["dev_probabilities"], members[1]["dev_probabilities"], atol=1e-3)
    assert metrics["members"][1]["dev"]["weighted_f1"] == single["dev"]["weighted_f1"]
    for split in ("dev", "test"):
        assert list(members[0][f"{split}_keys"]) == list(members[1][f"{split}_keys"])
        labels = [EMOTIONS.index(u.emotion) for u in read_split(meld, split)]
        predicted = ((members[0][f"{split}_probabilities"] + members[1][f"{split}_probabilities"]) / 2).argmax(1)
        assert metrics[split]["weighted_f1"] == pytest.approx(f1_score(labels, predicted, average="weighted"))
    assert json.loads((tmp_path / "ensemble" / "metrics.json").read_text())["dev"] == metrics["dev"]


def test_members_side_by_side_are_the_members_one_after_the_other(meld, text_encoder, cache, tmp_path):
    """--member-processes 2 trains the two members in two processes (a share of the threads each): the same member
    runs, probabilities and ensemble scores as --ensemble 2 alone (thread counts differ, so to 1e-4)."""
    flags = ["-mod", "t", "--text-joint", "--text-finetune-lr", "1e-3", "--epochs", "2", "--ensemble", "2", "--seed", "5"]
    apart = run(meld, text_encoder, cache, tmp_path / "apart", *flags)
    together = run(meld, text_encoder, cache, tmp_path / "together", *flags, "--member-processes", "2")
    for k in (1, 2):
        expected, found = (np.load(tmp_path / name / f"member_{k}" / "predictions.npz") for name in ("apart", "together"))
        for split in ("dev", "test"):
            assert list(found[f"{split}_keys"]) == list(expected[f"{split}_keys"])
            np.testing.assert_allclose(found[f"{split}_probabilities"], expected[f"{split}_probabilities"], atol=1e-4)
    assert together["members"] == apart["members"] and together["dev"] == apart["dev"] and together["test"] == apart["test"]


def test_resume_of_a_finished_run_reevaluates(meld, text_encoder, cache, tmp_path):
    """The finished run scored dev with the weights in memory, the resumed one with model.pt reloaded: the same."""
    first = run(meld, text_encoder, cache, tmp_path / "run", "-mod", "t", "--epochs", "2")
    first_predictions = dict(np.load(tmp_path / "run" / "predictions.npz"))
    again = run(meld, text_encoder, cache, tmp_path / "run", "-mod", "t", "--epochs", "2", "--resume")
    assert again["dev"] == first["dev"] and again["test"] == first["test"]
    resumed = np.load(tmp_path / "run" / "predictions.npz")
    for split in ("dev", "test"):
        assert list(resumed[f"{split}_keys"]) == list(first_predictions[f"{split}_keys"])
        np.testing.assert_allclose(resumed[f"{split}_probabilities"], first_predictions[f"{split}_probabilities"], atol=1e-6)


def test_bad_input_is_one_clear_line(tmp_path, meld, capsys):
    argv = ["--data", str(meld), "-mod", "t", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train_meld.main(argv))
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and stderr.strip().count("\n") == 0
    assert stderr.startswith("error: ") and "--text-model" in stderr
    with pytest.raises(train_meld.InputError, match="--member-processes 0"):
        train_meld.main([*argv, "--member-processes", "0"])
    with pytest.raises(train_meld.InputError, match="train_sent_emo.csv: not found"):
        train_meld.main(["--data", str(tmp_path), "--out", str(tmp_path / "run")])


def test_every_flag_is_explained():
    actions = [a for a in train_meld.build_parser()._actions if a.option_strings]
    assert all(a.help for a in actions), [a.option_strings for a in actions if not a.help]


def test_csv_as_released(tmp_path):
    path = tmp_path / "dev_sent_emo.csv"
    path.write_bytes("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
                     '1,"Oh my God, you\x92re \u2018here\u2019\u2026",Ross,Joy,positive,7,2,3,5,"00:16:16,059","00:16:21,731"\n'
                     .encode("utf-8"))
    [row] = read_split(tmp_path, "dev")
    assert (row.key, row.emotion, row.text) == ("dev/dia7_utt2", "joy", "Oh my God, you're 'here'...")
    assert row.start_s == pytest.approx(976.059) and row.end_s == pytest.approx(981.731)
    assert parse_time("01:02:03,4") == pytest.approx(3723.4) and parse_time("") is None
    assert read_split(tmp_path, "test") is None
    path.write_text("Sr No.,Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID\n1,Hi,Ross,bored,0,0\n")
    with pytest.raises(train_meld.InputError, match=r"dev_sent_emo.csv:2: unknown emotion 'bored'"):
        read_split(tmp_path, "dev")


def test_a_tree_of_linked_csvs_and_clip_folders_is_read_like_real_files(meld, tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    for entry in sorted(meld.iterdir()):
        (linked / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for split in ("train", "dev", "test"):
        rows, linked_rows = read_split(meld, split), read_split(linked, split)
        assert linked_rows == rows
        found = [find_clip(linked, u) for u in linked_rows]
        assert [path.name if path else None for path in found] == [p.name if (p := find_clip(meld, u)) else None for u in rows]
        assert sum(path is not None for path in found) == len(rows) - (split == "train")  # train dia1_utt1 has no clip


def test_entropy_ranked_frames_keep_time_order():
    assert frame_entropy(np.zeros((8, 8, 3), np.uint8)) == 0.0
    uniform = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    assert frame_entropy(uniform) == pytest.approx(8.0)
    rng = np.random.default_rng(0)
    levels = [1, 8, 2, 64, 4, 32, 16]  # distinct grey levels per frame: entropy grows with the count
    frames = [(rng.integers(0, n, (16, 16, 1)) * (256 // n)).repeat(3, axis=2).astype(np.uint8) for n in levels]
    kept = top_entropy_frames(iter(frames), 3)
    assert [next(i for i, f in enumerate(frames) if np.array_equal(f, k)) for k in kept] == [3, 5, 6]
    assert top_entropy_frames(iter([]), 3) is None


def test_sentence_pooling_ignores_padding(text_encoder):
    encoder = SentenceEncoder(text_encoder)
    alone = encoder(["wow"])
    batched = encoder(["wow", "i think the coffee was great so really okay"])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    assert torch.allclose(batched.norm(dim=1), torch.ones(2), atol=1e-5)
    assert len(EMOTIONS) == 7


def test_amp_fine_tuning_computes_in_bf16_and_updates_float32_weights(text_encoder):
    """--amp: the fine-tuning's forward pass runs in bf16 autocast (the attention's Linear outputs are bf16,
    float32 without it) while the weights it updates stay float32."""
    texts = ["wow", "i think the coffee was great", "okay really", "so great", "the coffee", "really okay wow"] * 4
    labels = [i % 3 for i in range(len(texts))]
    for amp, expected in ((False, torch.float32), (True, torch.bfloat16)):
        encoder = SentenceEncoder(text_encoder)
        query = encoder.model.encoder.layer[0].attention.self.query
        before, seen = query.weight.detach().clone(), set()
        hook = query.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
        encoder.finetune(texts, labels, num_classes=3, epochs=1, lr=1e-3, class_weights=torch.ones(3), seed=0, batch_size=8, amp=amp)
        hook.remove()
        assert seen == {expected}
        assert query.weight.dtype == torch.float32 and not torch.equal(query.weight, before)


def test_context_is_seen_but_only_the_utterance_is_pooled(text_encoder):
    encoder = SentenceEncoder(text_encoder)
    texts, contexts = ["wow", "i think the coffee was great"], ["Ross: okay really", "Monica: wow"]
    pooled = encoder(texts, contexts)
    for row, (text, context) in enumerate(zip(texts, contexts)):  # reference: one pair at a time, mean over [CLS] text [SEP]
        tokens = encoder.tokenizer([text], [context], return_tensors="pt")
        own_tokens = len(encoder.tokenizer([text])["input_ids"][0])
        with torch.no_grad():
            hidden = encoder.model(**tokens).last_hidden_state[0, :own_tokens]
        assert torch.allclose(pooled[row], torch.nn.functional.normalize(hidden.mean(0), dim=0), atol=1e-5)
    assert not torch.allclose(pooled[0], encoder(["wow"], ["Joey: great"])[0], atol=1e-3)  # attention sees the context


def test_text_context_holds_only_earlier_utterances_of_the_same_dialogue(meld):
    utterances = read_split(meld, "train")
    args = train_meld.build_parser().parse_args(["--data", str(meld), "--text-model", "unused", "--text-context", "2"])
    features = train_meld.TextFeatures({"train": utterances}, args, "cpu")
    by_key = dict(zip((u.key for u in utterances), features.contexts(utterances)))
    for utterance in utterances:
        earlier = sorted((u for u in utterances if u.dialogue == utterance.dialogue and u.utterance < utterance.utterance),
                         key=lambda u: u.utterance)[-2:]
        assert by_key[utterance.key] == " ".join(f"{u.speaker}: {u.text}" for u in earlier)


def test_class_weights_are_powers_of_the_inverse_frequency():
    counts = np.array([500, 120, 30, 0, 7])
    inverse = counts.sum() / (len(counts) * np.maximum(counts, 1))
    for name, power in {"none": 0, "inverse": 1, "sqrt": 0.5, "fourth-root": 0.25}.items():
        np.testing.assert_allclose(train_meld.CLASS_WEIGHTS[name](counts), inverse ** power, rtol=1e-12)
    assert np.all(np.diff(train_meld.CLASS_WEIGHTS["fourth-root"](counts[:3])) > 0)  # rarer class, larger weight


def test_recipe_sets_defaults_and_given_flags_still_win():
    args = train_meld.parse_args(["--data", "MELD", "--recipe", "text"])
    assert {key: getattr(args, key) for key in train_meld.RECIPES["text"]} == train_meld.RECIPES["text"]
    args = train_meld.parse_args(["--data", "MELD", "--recipe", "text", "--ensemble", "2", "--text-model", "other", "--seed", "7"])
    assert (args.ensemble, args.text_model, args.seed, args.text_joint, args.epochs) == (2, "other", 7, True, 3)
    plain = train_meld.parse_args(["--data", "MELD"])
    assert (plain.ensemble, plain.text_joint, plain.amp, plain.text_model, plain.epochs) == (1, False, False, None, 20)
