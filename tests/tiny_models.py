"""Tiny random-weight BERT text-model folders for tests: a WordPiece vocabulary of the given words, a 1-layer
BertModel, and optionally the sentence-transformers pooling files."""
import json

import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def make_tiny_bert(folder, words, *, hidden=16, intermediate=None, pooling=None, seed=0):
    """Write to folder (created) vocab.txt (the special tokens, then the sorted unique words), its lower-casing
    BertTokenizer and a random-weight (torch seed `seed`) 1-layer BertModel of width `hidden` (feed-forward
    `intermediate`, 2 * hidden unless given); with pooling ('mean' or 'cls' or 'max'), laid out as a
    sentence-transformers folder (modules.json + 1_Pooling/config.json, as all-MiniLM-L6-v2). Returns folder.
    The tokenizer is built from `vocab=`: BertTokenizerFast(vocab_file=...) maps every word to [UNK]."""
    from transformers import BertConfig, BertModel, BertTokenizer
    folder.mkdir(parents=True)
    vocab = [*SPECIAL_TOKENS, *sorted(set(words))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=intermediate or 2 * hidden, max_position_embeddings=64)).save_pretrained(folder)
    if pooling:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max"}))
    return folder
