"""The one text encoder of train_meld.py and train_fv2es.py: a transformers encoder pooled as its folder says.

    encoder = TextEncoder("weights/all-MiniLM-L6-v2")     # sentence-transformers folder: mean of its tokens
    encoder = TextEncoder("albert-base-v2")               # anything else: the first ([CLS]) token
    vectors = encoder(input_ids, attention_mask)          # (B, hidden)

A sentence-transformers folder has modules.json naming a `sentence_transformers.models.Pooling` module whose
config.json (1_Pooling/config.json) sets pooling_mode_mean_tokens or pooling_mode_cls_token: the encoder pools the
way it was trained. A folder or hub name without modules.json (BERT, ALBERT, ...) takes the first token, as their
classifiers do. `finetune_lr(name)` is the AdamW rate each family is fine-tuned at unless a script is told otherwise.
"""
import json
from pathlib import Path

import torch.nn.functional as F
from torch import nn

from common import InputError, load_pretrained

# common fine-tuning rates: sentence-transformers models are small (MiniLM, mpnet), BERT/ALBERT-style
# models are fine-tuned at the lower end of the 2e-5..5e-5 range their papers use
FINETUNE_LR = {"sentence-transformers": 5e-5, "transformers": 2e-5}


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not readable JSON ({type(error).__name__}: {str(error)[:100]})") from None


def family(name):
    """'sentence-transformers' for a folder with modules.json, else 'transformers'."""
    return "sentence-transformers" if (Path(name) / "modules.json").is_file() else "transformers"


def finetune_lr(name):
    return FINETUNE_LR[family(name)]


def pooling_of(name):
    """'mean' or 'cls': what the folder's sentence-transformers Pooling config asks for; 'cls' without one."""
    modules_path = Path(name) / "modules.json"
    if not modules_path.is_file():
        return "cls"
    modules = _read_json(modules_path)
    if not isinstance(modules, list):
        raise InputError(f"{modules_path}: expected a list of sentence-transformers modules")
    pooling = next((m for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith("models.Pooling")), None)
    if pooling is None:
        raise InputError(f"{modules_path}: no sentence_transformers.models.Pooling module")
    config_path = Path(name) / str(pooling.get("path", "1_Pooling")) / "config.json"
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise InputError(f"{config_path}: expected the pooling settings as an object")
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    modes = [key for key, value in config.items() if key.startswith("pooling_mode") and value] or ["none"]
    raise InputError(f"{config_path}: pooling {', '.join(modes)} is not supported (mean or CLS tokens)")


class TextEncoder(nn.Module):
    """token ids (B, L), attention mask (B, L) -> (B, hidden): the folder's pooling (`pooling_of`) over the last
    hidden states, L2-normalised with normalize=True. `pooled_mask` (B, L) limits mean pooling to some of the real
    tokens (an utterance without the context paired with it)."""

    def __init__(self, name, *, normalize=False):
        super().__init__()
        self.pooling, self.normalize = pooling_of(name), normalize
        self.model = load_pretrained("AutoModel", str(name))
        self.hidden_size = self.model.config.hidden_size

    def forward(self, input_ids, attention_mask, *, token_type_ids=None, pooled_mask=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.model(**inputs).last_hidden_state                                          # (B, L, hidden)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = (attention_mask if pooled_mask is None else pooled_mask).unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled
