"""The one text-emotion core: models/text_encoder.py pools as the folder says (mean for sentence-transformers,
first token otherwise) for train_meld.py and train_fv2es.py alike, the family's fine-tuning rate is the default,
MELD converts to the FV2ES layout (preprocess.meld_to_fv2es) and train_fv2es.py -mod t trains and scores it
(7 classes, argmax weighted F1), on length-grouped batches."""
import json

import pytest
import torch

import train_fv2es
from common import InputError
from models.fv2es import MME2E
from models.meld_emotion import SentenceEncoder
from models.text_encoder import FINETUNE_LR, TextEncoder, finetune_lr, pooling_of
from preprocess import meld_to_fv2es
from preprocess.fixtures.meld import FIXTURE_WORDS, make_meld
from preprocess.fv2es_reader import read_processed
from preprocess.meld import EMOTIONS, read_split

pytestmark = pytest.mark.usefixtures("single_thread")


def make_tiny_bert(folder, pooling=None):
    """A random-weight 1-layer BERT over the MELD fixture's words; with pooling ('mean' or 'cls' or 'max'), laid
    out as a sentence-transformers folder (modules.json + 1_Pooling/config.json, as all-MiniLM-L6-v2)."""
    from transformers import BertConfig, BertModel, BertTokenizer
    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(FIXTURE_WORDS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=64)).save_pretrained(folder)
    if pooling:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": 16, "pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max"}))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_models")
    return {pooling: make_tiny_bert(root / pooling, None if pooling == "plain" else pooling) for pooling in ("mean", "cls", "plain", "max")}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("meld")
    make_meld(root / "raw", seed=0, with_clips=False)
    meld_to_fv2es.main([str(root / "raw"), str(root / "fv2es")])
    return root


def tokens(folder, texts):
    from transformers import AutoTokenizer
    encoded = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def test_pooling_follows_the_folder(models):
    assert [pooling_of(models[p]) for p in ("mean", "cls", "plain")] == ["mean", "cls", "cls"]
    assert pooling_of("albert-base-v2") == "cls"  # a hub name: no folder to read
    with pytest.raises(InputError, match=r"1_Pooling/config.json: pooling pooling_mode_max_tokens is not supported"):
        pooling_of(models["max"])
    assert finetune_lr(models["mean"]) == FINETUNE_LR["sentence-transformers"] and finetune_lr(models["plain"]) == FINETUNE_LR["transformers"]


def test_mean_pooling_is_the_masked_mean_and_cls_the_first_token(models):
    texts = ["wow", "i think the coffee was great so really okay"]
    for pooling in ("mean", "cls"):
        encoder = TextEncoder(models[pooling]).eval()
        input_ids, attention_mask = tokens(models[pooling], texts)
        with torch.no_grad():
            pooled = encoder(input_ids, attention_mask)
            alone = encoder(*tokens(models[pooling], texts[:1]))
            hidden = encoder.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        real = int(attention_mask[0].sum())
        expected = hidden[0, :real].mean(0) if pooling == "mean" else hidden[0, 0]
        assert torch.allclose(pooled[0], expected, atol=1e-5) and torch.allclose(pooled[0], alone[0], atol=1e-5)  # padding ignored
    assert not torch.allclose(TextEncoder(models["mean"]).eval()(*tokens(models["mean"], texts))[0],
                              TextEncoder(models["cls"]).eval()(*tokens(models["cls"], texts))[0])


def test_both_scripts_use_the_one_wrapper(models):
    """train_meld's SentenceEncoder and train_fv2es's text branch are the same TextEncoder with the same pooling;
    the sentence vectors are its output, L2-normalised."""
    texts = ["wow", "i think the coffee was great"]
    sentence = SentenceEncoder(models["mean"])
    fv2es = MME2E(modalities="t", num_classes=7, text_model=str(models["mean"])).eval()
    assert isinstance(sentence.encoder, TextEncoder) and isinstance(fv2es.text, TextEncoder)
    assert sentence.encoder.pooling == fv2es.text.pooling == "mean"
    with torch.no_grad():
        branch = fv2es.text(*tokens(models["mean"], texts))
    assert torch.allclose(sentence(texts), torch.nn.functional.normalize(branch, dim=1), atol=1e-5)


def test_converter_keeps_meld_splits_dialogues_and_labels(converted):
    items, splits, failures = read_processed(converted / "fv2es", "meld")
    assert failures == []
    for meld_split, fv2es_split in (("train", "train"), ("dev", "valid"), ("test", "test")):
        rows = read_split(converted / "raw", meld_split)
        assert splits[fv2es_split] == [f"{meld_split}_dia{u.dialogue}_utt{u.utterance}" for u in rows]
        for row in rows:
            item = items[f"{meld_split}_dia{row.dialogue}_utt{row.utterance}"]
            assert item.text == row.text and item.group == f"{meld_split}_dia{row.dialogue}"
            assert item.label.shape == (7,) and EMOTIONS[int(item.label.argmax())] == row.emotion and item.label.sum() == 1
    groups = {split: {items[i].group for i in ids} for split, ids in splits.items()}
    assert not (groups["train"] & groups["valid"]) and not (groups["valid"] & groups["test"])


def test_fv2es_trains_on_converted_meld_text_with_seven_classes(converted, models, tmp_path):
    out = tmp_path / "run"
    metrics = train_fv2es.main(["-lr", "1e-2", "-mod", "t", "--dataset", "meld", "--data", str(converted / "fv2es"), "--loss", "ce",
                                "--text-model", str(models["mean"]), "--text-lr", "3e-3", "-ep", "8", "-es", "8", "-bs", "8", "--device", "cpu",
                                "--out", str(out)])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["valid"] == metrics["valid"] and "checkpoint = best valid weighted_f1" in saved["protocol"]
    for split in ("valid", "test"):
        assert len(saved[split]["per_emotion"]) == 7 and len(saved[split]["confusion_matrix"]) == 7
        assert {"accuracy_7way", "weighted_f1", "majority_baseline_weighted_f1"} <= set(saved[split])
    args = json.loads((out / "args.json").read_text())["args"]
    assert args["num_emotions"] == 7 and args["text_lr"] == 3e-3
    # the planted cue word of each emotion is learned well beyond the majority class
    assert saved["valid"]["weighted_f1"] > saved["valid"]["majority_baseline_weighted_f1"] + 0.3


def test_text_lr_defaults_to_the_family_rate(models):
    for folder, family in ((models["mean"], "sentence-transformers"), (models["plain"], "transformers")):
        args = train_fv2es.build_parser().parse_args(["-lr", "4.5e-6", "-mod", "tav", "--text-model", str(folder)])
        train_fv2es.check_args(args)
        assert args.text_lr == FINETUNE_LR[family] and args.num_emotions == 6


def test_without_a_test_csv_valid_is_the_reported_split(converted, models, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("train_sent_emo.csv", "dev_sent_emo.csv"):
        (raw / name).write_bytes((converted / "raw" / name).read_bytes())
    meld_to_fv2es.main([str(raw), str(tmp_path / "fv2es")])
    assert (tmp_path / "fv2es" / "MELD_SPLIT" / "test_split.txt").read_text() == ""
    metrics = train_fv2es.main(["-lr", "1e-3", "-mod", "t", "--dataset", "meld", "--data", str(tmp_path / "fv2es"), "--text-model",
                                str(models["plain"]), "-ep", "1", "-bs", "8", "--device", "cpu", "--out", str(tmp_path / "run"), "--text-lr-factor", "4"])
    assert "test" not in metrics and "valid is both the selection and the reported split" in metrics["protocol"]
    assert json.loads((tmp_path / "run" / "args.json").read_text())["args"]["text_lr"] == 1e-3 / 4  # the original factor, when given
    with pytest.raises(InputError, match="empty test split"):
        train_fv2es.main(["--test", "--ckpt", str(tmp_path / "run" / "model.pt")])


def test_bad_input_for_meld_is_one_clear_error(converted, models, tmp_path):
    data = ["-lr", "1e-3", "--dataset", "meld", "--data", str(converted / "fv2es"), "--text-model", str(models["mean"])]
    with pytest.raises(InputError, match="--num-emotions 6: --dataset meld has 7"):
        train_fv2es.main([*data, "-mod", "t", "--num-emotions", "6"])
    with pytest.raises(InputError, match="use -mod t"):
        train_fv2es.main([*data, "-mod", "ta"])
    with pytest.raises(InputError, match="train_sent_emo.csv: not found"):
        meld_to_fv2es.convert(tmp_path, tmp_path / "out")


def test_length_batches_cover_every_item_once_in_seeded_similar_length_batches():
    lengths = [(7 * i) % 53 for i in range(230)]
    sampler = train_fv2es.LengthBatches(lengths, 4, seed=3)
    first = sampler.batches()
    assert len(first) == len(sampler) and sorted(i for batch in first for i in batch) == list(range(230))
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first]
    assert sum(spreads) / len(spreads) < 2  # lengths 0..52: random batches of 4 spread over about 30
    assert sampler.batches() == first
    sampler.set_epoch(1)
    assert sampler.batches() != first
