"""MELD emotion model (seed 003) and the frozen encoders that turn utterances into feature vectors.

Frozen feature encoders (run once, cached by train_meld.py):
  SentenceEncoder   models.text_encoder.TextEncoder from a local folder (mean pooling for sentence-transformers
                    folders such as all-MiniLM-L6-v2, the first token otherwise), then L2 normalisation -> (N, hidden).
  Wav2Vec2Mean      a transformers wav2vec2 model from a local folder, mean over its last hidden states -> 768-d.
  FrameEncoder      torchvision ResNet-50 (ImageNet weights from a file/folder, or a seeded random init),
                    global-average-pooled 2048-d per frame, averaged over the utterance's frames.

Classifier: per modality a BiLSTM (our LSTM) over the utterance sequence (a dialogue, or one utterance),
Linear to d_model plus a learned modality embedding; multi-head self-attention over the modality tokens of
each utterance (residual + LayerNorm), mean over modalities -> fused vector (d_model) -> Linear -> classes.

JointTextClassifier: that classifier on text alone with the text encoder inside it, trained together
(train_meld.py --text-joint): utterance texts in, logits out.
"""
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from common import InputError, autocast, load_torchvision_weights
from models.lstm import LSTM
from models.text_encoder import TextEncoder
from models.transformer import MultiheadAttention

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _local_model_dir(path, flag, hint):
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"{flag} {path}: not a local model folder with config.json ({hint})")
    return path


class SentenceEncoder:
    """texts -> float32 (N, hidden): models.text_encoder.TextEncoder (the folder's pooling: mean over real tokens
    for sentence-transformers such as MiniLM, the first token otherwise), L2-normalised."""

    def __init__(self, model_dir, *, device="cpu", max_length=128):
        from transformers import AutoTokenizer
        model_dir = _local_model_dir(model_dir, "--text-model", "run `make weights` for weights/all-MiniLM-L6-v2")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.encoder = TextEncoder(model_dir, normalize=True).eval().to(device)
        self.model = self.encoder.model
        self.device, self.max_length = device, max_length

    def embed(self, texts, contexts=None):
        """With `contexts` (one string per text, e.g. the previous utterances), each text is encoded as the pair
        (text, context), so attention sees the context, but only the text's tokens ([CLS] text [SEP]) are pooled."""
        if contexts is None:
            tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            pooled_positions = tokens["attention_mask"]
        else:
            tokens = self.tokenizer(list(texts), list(contexts), padding=True, truncation="longest_first",
                                    max_length=self.max_length, return_tensors="pt")
            pooled_positions = tokens["attention_mask"].clone()
            for row in range(len(texts)):
                context_start = tokens.sequence_ids(row).index(1) if 1 in tokens.sequence_ids(row) else None
                if context_start is not None:
                    pooled_positions[row, context_start:] = 0
        tokens = tokens.to(self.device)
        return self.encoder(tokens["input_ids"], tokens["attention_mask"], token_type_ids=tokens.get("token_type_ids"),
                            pooled_mask=pooled_positions.to(self.device))

    @torch.no_grad()
    def __call__(self, texts, contexts=None):
        self.model.eval()
        return self.embed(texts, contexts).float().cpu()

    def finetune(self, texts, labels, *, num_classes, epochs, lr, class_weights, seed, contexts=None, batch_size=32, amp=False,
                 progress=lambda items, desc: items):
        """Fine-tune the encoder (word embeddings frozen) with a temporary linear head on (the train split's)
        texts and labels: AdamW, linear decay, class-weighted cross-entropy on 20x the L2-normalised embedding.
        Batches hold texts of similar length (less padding) in a shuffled order. amp: bf16 autocast of the
        forward pass (float32 weights and optimiser)."""
        generator = torch.Generator().manual_seed(seed)
        head = nn.Linear(self.model.config.hidden_size, num_classes).to(self.device)
        # the word-embedding table is most of the parameters but its gradient is sparse: freezing it halves the
        # cost of a step and keeps the embeddings of words absent from train where pre-training put them
        word_embeddings = self.model.get_input_embeddings().weight
        word_embeddings.requires_grad_(False)
        parameters = [p for p in [*self.model.parameters(), *head.parameters()] if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + (len(contexts[i]) if contexts else 0))
        chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / (epochs * len(chunks)))
        labels, weights = torch.as_tensor(labels, device=self.device), class_weights.to(self.device)
        self.model.train()
        for epoch in range(epochs):
            for chunk in progress([chunks[i] for i in torch.randperm(len(chunks), generator=generator)],
                                  desc=f"fine-tuning text encoder {epoch + 1}/{epochs}"):
                with autocast(torch.device(self.device), amp):
                    logits = head(20 * self.embed([texts[i] for i in chunk], None if contexts is None else [contexts[i] for i in chunk]))
                loss = F.cross_entropy(logits.float(), labels[chunk], weight=weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
        self.model.eval()


class Wav2Vec2Mean:
    """16 kHz mono wave (samples,) -> float32 (hidden,): mean of the last hidden states over time."""

    def __init__(self, model_dir, *, device="cpu"):
        from transformers import AutoFeatureExtractor, Wav2Vec2Model
        model_dir = _local_model_dir(model_dir, "--audio-model", "download e.g. facebook/wav2vec2-base-960h to a folder")
        self.extractor = AutoFeatureExtractor.from_pretrained(model_dir)
        self.model = Wav2Vec2Model.from_pretrained(model_dir).eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, wave):
        inputs = self.extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt").input_values.to(self.device)
        return self.model(inputs).last_hidden_state[0].mean(0).float().cpu()


class FrameEncoder(nn.Module):
    """uint8 frames (T, H, W, 3) -> float32 (2048,): ImageNet-normalised ResNet-50, mean over frames."""

    def __init__(self, weights=None, *, seed=0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the random trunk (no --video-weights) is the same in every run
            resnet = torchvision.models.resnet50(weights=None)
        if weights:
            resnet.load_state_dict(load_torchvision_weights(weights, "resnet50"))
        resnet.fc = nn.Identity()
        self.resnet = resnet.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, frames):
        images = torch.as_tensor(frames).to(self.mean.device).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
        return self.resnet((images - self.mean) / self.std).mean(0).cpu()


class MELDEmotionClassifier(nn.Module):
    """features {modality: (B, T, F_m)}, lengths (B,) -> logits (B, T, classes); T utterances per sequence."""

    def __init__(self, *, input_dims, num_classes=7, hidden=256, d_model=512, heads=8, dropout=0.3):
        super().__init__()
        self.modalities = list(input_dims)
        self.input_dropout = nn.Dropout(dropout)
        self.lstms = nn.ModuleDict({m: LSTM(dim, hidden, num_layers=1, bidirectional=True) for m, dim in input_dims.items()})
        self.projections = nn.ModuleDict({m: nn.Linear(2 * hidden, d_model) for m in input_dims})
        self.modality_embedding = nn.Parameter(torch.zeros(len(input_dims), d_model))
        self.attention = MultiheadAttention(d_model, heads, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, num_classes)

    def fuse(self, features, lengths):
        """The fused per-utterance vectors (B, T, d_model) that feed the classifier (and the SVM head)."""
        tokens = []
        for index, modality in enumerate(self.modalities):
            sequence, _ = self.lstms[modality](self.input_dropout(features[modality]), lengths)  # (B, T, 2H)
            tokens.append(self.projections[modality](sequence) + self.modality_embedding[index])
        batch, steps = tokens[0].shape[:2]
        tokens = torch.stack(tokens, dim=2).flatten(0, 1)                  # (B*T, M, d_model)
        attended, _ = self.attention(tokens, tokens, tokens)
        fused = self.norm(tokens + self.dropout(attended)).mean(1)          # (B*T, d_model)
        return fused.view(batch, steps, -1)

    def forward(self, features, lengths):
        return self.classifier(self.dropout(self.fuse(features, lengths)))


class JointTextClassifier(nn.Module):
    """{"t": [[utterance text, ...] per sequence]}, lengths (B,) -> logits (B, T, classes): each utterance encoded
    alone by models.text_encoder.TextEncoder (the folder's pooling, L2-normalised, times sqrt(hidden) so that a
    feature is about unit size), then MELDEmotionClassifier over the sequence; both trained together. The word
    embeddings and an unused pooler stay frozen. Utterances of similar length are encoded `chunk` at a time (less
    padding); amp: bf16 autocast of the encoder only (the classifier runs in float32)."""

    def __init__(self, model_dir, *, num_classes=7, max_length=128, amp=False, chunk=8, **classifier_args):
        super().__init__()
        from transformers import AutoTokenizer
        model_dir = _local_model_dir(model_dir, "--text-model", "run `make weights-mpnet` for weights/all-mpnet-base-v2")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.encoder = TextEncoder(model_dir, normalize=True)
        frozen = [self.encoder.model.get_input_embeddings().weight]
        if getattr(self.encoder.model, "pooler", None) is not None:  # BERT/MPNet's pooler: unused by mean or CLS pooling
            frozen += list(self.encoder.model.pooler.parameters())
        for parameter in frozen:
            parameter.requires_grad_(False)
        self.classifier = MELDEmotionClassifier(input_dims={"t": self.encoder.hidden_size}, num_classes=num_classes, **classifier_args)
        self.max_length, self.amp, self.chunk = max_length, amp, chunk

    def encoder_parameters(self):
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def embed(self, texts):
        """[text] -> (N, hidden) float32 utterance vectors."""
        device = self.classifier.classifier.weight.device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts = []
        for start in range(0, len(order), self.chunk):
            tokens = self.tokenizer([texts[i] for i in order[start:start + self.chunk]], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(device)
            with autocast(device, self.amp):
                parts.append(self.encoder(tokens["input_ids"], tokens["attention_mask"], token_type_ids=tokens.get("token_type_ids")).float())
        return torch.cat(parts)[torch.argsort(torch.tensor(order, device=device))] * math.sqrt(self.encoder.hidden_size)

    def _sequences(self, features):
        texts = features["t"]
        vectors = self.embed([text for sequence in texts for text in sequence])                           # (N, hidden)
        split = torch.split(vectors, [len(sequence) for sequence in texts])
        return {"t": nn.utils.rnn.pad_sequence(split, batch_first=True)}                                  # (B, T, hidden)

    def fuse(self, features, lengths):
        return self.classifier.fuse(self._sequences(features), lengths)

    def forward(self, features, lengths):
        return self.classifier(self._sequences(features), lengths)
