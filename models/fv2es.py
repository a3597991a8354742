"""FV2ES (built on MME2E): end-to-end text + audio + face models, and the hand-crafted-feature baselines.

    model = MME2E(modalities="tav", num_classes=6, trans_dim=64, trans_nlayers=4, trans_nheads=4,
                  audio_size="cpu", text_model="weights/all-MiniLM-L6-v2")
    logits = model(batch)     # (B, C); batch as train_fv2es.collate builds it
    fast = fuse_repvgg(model)  # a copy whose RepVGG blocks are single 3x3 convs, for inference

Faces (N, 3, 48, 48) -> VisualCNN -> (N, trans_dim); mel chunks (N, 4, 32, 32) -> NestedAudioEncoder ->
(N, trans_dim); per utterance the sequence of those goes through a TemporalEncoder (CLS token + key-padding
mask) -> Linear -> C logits. Text: models.text_encoder.TextEncoder (the folder's pooling: mean for
sentence-transformers, the first token otherwise) -> Linear -> C. The per-modality
logits (B, C, M) are fused by a learned Linear(M -> 1, no bias) (`fusion="late"`), or the modality vectors
are concatenated before one Linear (`fusion="early"`).
"""
import torch
from torch import nn

from models.lstm import GRU, LSTM
from models.repvgg import RepVGGBlock
from models.text_encoder import TextEncoder
from models.transformer import CLSToken, SinusoidalPositions, TransformerEncoder, padding_mask

FACE_MEAN = (159.0, 111.0, 102.0)  # on 0-255 values, as MME2E
FACE_STD = (37.0, 33.0, 32.0)
# NesT presets: patch side on the 32x32 chunk, widths and depths of the 3 levels, heads of the first level
AUDIO_SIZES = {
    "tiny": {"patch": 4, "dims": (16, 32, 64), "depths": (1, 1, 1), "heads": 2},
    "cpu": {"patch": 2, "dims": (64, 128, 256), "depths": (1, 1, 2), "heads": 2},
    "paper": {"patch": 1, "dims": (128, 256, 512), "depths": (2, 2, 20), "heads": 4},  # FV2ES: NesT-B defaults, patch 1
}


def normalise_faces(faces_uint8):
    """uint8 (N, 48, 48, 3) -> float (N, 3, 48, 48) normalised with MME2E's face mean/std."""
    faces = faces_uint8.permute(0, 3, 1, 2).float()  # (N, H, W, 3) -> (N, 3, H, W)
    mean = faces.new_tensor(FACE_MEAN)[None, :, None, None]
    std = faces.new_tensor(FACE_STD)[None, :, None, None]
    return (faces - mean) / std


class VisualCNN(nn.Module):
    """(N, 3, 48, 48) -> (N, out_dim): Conv5x5+BN+ReLU+MaxPool, RepVGG 64,64,128 + pool, 256 + pool, 512 + pool,
    flatten 512*3*3 = 4608 -> 1024 -> out_dim. Trained multi-branch; fuse a copy with fuse_repvgg for inference."""

    def __init__(self, out_dim, *, hidden=1024, dropout=0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 5, padding=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # 48 -> 24
            RepVGGBlock(64, 64), RepVGGBlock(64, 64), RepVGGBlock(64, 128), nn.MaxPool2d(2),  # -> 12
            RepVGGBlock(128, 256), nn.MaxPool2d(2),  # -> 6
            RepVGGBlock(256, 512), nn.MaxPool2d(2))  # -> 3
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(512 * 3 * 3, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, out_dim))

    def forward(self, faces):
        return self.head(self.features(faces))


class NestLevel(nn.Module):
    """Transformer layers applied inside each block_side x block_side block of a (B, C, H, W) map."""

    def __init__(self, dim, *, depth, heads, block_side, dropout):
        super().__init__()
        self.block_side = block_side
        self.positions = nn.Parameter(torch.randn(1, block_side * block_side, dim) * 0.02)
        self.encoder = TransformerEncoder(d_model=dim, nhead=heads, num_layers=depth, dim_feedforward=4 * dim,
                                          dropout=dropout, activation="gelu", norm_first=True)

    def forward(self, fmap):
        batch, dim, height, width = fmap.shape
        side = self.block_side
        rows, cols = height // side, width // side
        # (B, C, H, W) -> (B * blocks, side * side, C)
        tokens = fmap.view(batch, dim, rows, side, cols, side).permute(0, 2, 4, 3, 5, 1)
        tokens = tokens.reshape(batch * rows * cols, side * side, dim)
        tokens = self.encoder(tokens + self.positions)
        # (B * blocks, side * side, C) -> (B, C, H, W)
        tokens = tokens.view(batch, rows, cols, side, side, dim).permute(0, 5, 1, 3, 2, 4)
        return tokens.reshape(batch, dim, height, width)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, fmap):
        return self.norm(fmap.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class NestedAudioEncoder(nn.Module):
    """Hierarchical (nested, NesT) transformer over mel chunks: (N, 4, 32, 32) -> (N, out_dim).

    A chunk is 32 frames (0.4 s) of a 128-bin log-mel, its 128 bins folded into 4 channels of 32. Patches of
    patch x patch make a (32/patch)^2 grid; level 1 attends inside blocks of a quarter of the grid side (8x8
    blocks with patch 1), then conv3x3 + LayerNorm + maxpool(3, stride 2) halves the grid and widens it to the
    next level (3 levels: dims[0..2], heads doubling per level); the last map is LayerNormed and flattened ->
    hidden -> out_dim (the paper: 8 x 8 x 512 = 32768 -> 1024). NesT's stochastic depth is left out."""

    def __init__(self, out_dim, *, patch=2, dims=(64, 128, 256), depths=(1, 1, 2), heads=2, hidden=1024, dropout=0.1):
        super().__init__()
        grid = 32 // patch
        if grid % 4:
            raise ValueError(f"patch {patch}: the 32x32 chunk must give a grid divisible by 4")
        self.embed = nn.Conv2d(4, dims[0], patch, stride=patch)  # (N, 4, 32, 32) -> (N, dims[0], grid, grid)
        self.levels = nn.ModuleList()
        self.aggregations = nn.ModuleList()
        for level, (dim, depth) in enumerate(zip(dims, depths)):
            side = grid >> level
            self.levels.append(NestLevel(dim, depth=depth, heads=heads * 2 ** level, block_side=min(side, grid // 4), dropout=dropout))
            if level + 1 < len(dims):
                self.aggregations.append(nn.Sequential(nn.Conv2d(dim, dims[level + 1], 3, padding=1), ChannelLayerNorm(dims[level + 1]),
                                                       nn.MaxPool2d(3, stride=2, padding=1)))
        final_side = grid >> (len(dims) - 1)
        self.norm = ChannelLayerNorm(dims[-1])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(dims[-1] * final_side ** 2, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, out_dim))

    def forward(self, chunks):
        fmap = self.embed(chunks)
        for level, transformer in enumerate(self.levels):
            fmap = transformer(fmap)
            if level < len(self.aggregations):
                fmap = self.aggregations[level](fmap)
        return self.head(self.norm(fmap))


class TemporalEncoder(nn.Module):
    """(B, T, D) sequences with lengths (B,) -> (B, D): learned CLS token + sinusoidal positions + transformer
    encoder with a key-padding mask; returns the CLS output."""

    def __init__(self, dim, *, nlayers, nheads, dropout=0.1):
        super().__init__()
        self.positions = SinusoidalPositions(dim)
        self.cls = CLSToken(dim)
        self.encoder = TransformerEncoder(d_model=dim, nhead=nheads, num_layers=nlayers, dim_feedforward=4 * dim, dropout=dropout)

    def forward(self, sequence, lengths):
        with_cls, mask = self.cls(self.positions(sequence), key_padding_mask=padding_mask(lengths, sequence.shape[1]))
        return self.encoder(with_cls, src_key_padding_mask=mask)[:, 0]


def pad_by_counts(flat, counts):
    """(sum(counts), D) rows of all items back to (B, max(counts), D), zero-padded."""
    padded = flat.new_zeros(len(counts), max(1, int(counts.max())), flat.shape[1])
    rows = torch.arange(padded.shape[1], device=flat.device)[None, :] < counts[:, None]  # (B, T)
    padded[rows] = flat
    return padded


class LateFusion(nn.Module):
    """Per-modality logits (B, C, M) -> (B, C) by a learned weighted sum Linear(M -> 1, no bias)."""

    def __init__(self, num_modalities):
        super().__init__()
        self.weights = nn.Linear(num_modalities, 1, bias=False)
        nn.init.constant_(self.weights.weight, 1.0 / num_modalities)

    def forward(self, stacked_logits):
        return self.weights(stacked_logits).squeeze(-1)


class _Fused(nn.Module):
    """Shared head: each modality encoder gives a vector; late = Linear per modality + LateFusion, early = concat + Linear."""

    def _build_heads(self, dims, num_classes, fusion):
        self.fusion = fusion
        if fusion == "late":
            self.heads = nn.ModuleDict({m: nn.Linear(dim, num_classes) for m, dim in dims.items()})
            self.fuse = LateFusion(len(dims))
        else:
            self.heads = nn.ModuleDict({"all": nn.Linear(sum(dims.values()), num_classes)})

    def _combine(self, vectors):
        if self.fusion == "early":
            return self.heads["all"](torch.cat([vectors[m] for m in self.modalities], dim=-1))
        logits = torch.stack([self.heads[m](vectors[m]) for m in self.modalities], dim=-1)  # (B, C, M)
        return self.fuse(logits)


class MME2E(_Fused):
    """The end-to-end model. batch: {"text": (input_ids, attention_mask), "faces": float (N_v, 3, 48, 48),
    "face_counts": (B,), "mel_chunks": (N_a, 4, 32, 32), "chunk_counts": (B,)} (only the -mod keys needed)."""

    def __init__(self, *, modalities, num_classes, trans_dim=64, trans_nlayers=4, trans_nheads=4, audio_size="cpu",
                 text_model=None, dropout=0.1, fusion="late"):
        super().__init__()
        self.modalities = modalities
        dims = {}
        if "t" in modalities:
            self.text = TextEncoder(text_model)
            dims["t"] = self.text.hidden_size
        if "a" in modalities:
            self.audio = NestedAudioEncoder(trans_dim, **AUDIO_SIZES[audio_size], dropout=dropout)
            self.audio_temporal = TemporalEncoder(trans_dim, nlayers=trans_nlayers, nheads=trans_nheads, dropout=dropout)
            dims["a"] = trans_dim
        if "v" in modalities:
            self.visual = VisualCNN(trans_dim, dropout=dropout)
            self.visual_temporal = TemporalEncoder(trans_dim, nlayers=trans_nlayers, nheads=trans_nheads, dropout=dropout)
            dims["v"] = trans_dim
        self._build_heads(dims, num_classes, fusion)

    def text_parameters(self):
        return list(self.text.parameters()) if "t" in self.modalities else []

    def forward(self, batch):
        vectors = {}
        if "t" in self.modalities:
            vectors["t"] = self.text(*batch["text"])
        if "a" in self.modalities:
            chunks = pad_by_counts(self.audio(batch["mel_chunks"]), batch["chunk_counts"])  # (B, T_a, D)
            vectors["a"] = self.audio_temporal(chunks, batch["chunk_counts"].clamp(min=1))
        if "v" in self.modalities:
            frames = pad_by_counts(self.visual(batch["faces"]), batch["face_counts"])  # (B, T_v, D)
            vectors["v"] = self.visual_temporal(frames, batch["face_counts"].clamp(min=1))
        return self._combine(vectors)


class HandCrafted(_Fused):
    """lf_rnn / lf_transformer: per-modality LSTM/GRU (last real step) or transformer (CLS) over hand-crafted
    feature sequences batch["hcf"][m] (B, T, F_m) with lengths batch["hcf_lengths"][m] (B,)."""

    def __init__(self, *, kind, modalities, input_dims, num_classes, hidden=128, num_layers=1, bidirectional=False, gru=False,
                 trans_dim=64, trans_nlayers=2, trans_nheads=4, dropout=0.1, fusion="late"):
        super().__init__()
        self.kind, self.modalities = kind, modalities
        self.encoders, self.projections, dims = nn.ModuleDict(), nn.ModuleDict(), {}
        for m in modalities:
            if kind == "lf_rnn":
                recurrent = GRU if gru else LSTM
                self.encoders[m] = recurrent(input_dims[m], hidden, num_layers=num_layers, bidirectional=bidirectional, dropout=dropout)
                dims[m] = hidden * (2 if bidirectional else 1)
            else:
                self.projections[m] = nn.Linear(input_dims[m], trans_dim)
                self.encoders[m] = TemporalEncoder(trans_dim, nlayers=trans_nlayers, nheads=trans_nheads, dropout=dropout)
                dims[m] = trans_dim
        self.dropout = nn.Dropout(dropout)
        self._build_heads(dims, num_classes, fusion)

    def text_parameters(self):
        return []

    def forward(self, batch):
        vectors = {}
        for m in self.modalities:
            sequence, lengths = batch["hcf"][m], batch["hcf_lengths"][m].clamp(min=1)
            if self.kind == "lf_rnn":
                output, _ = self.encoders[m](sequence, lengths=lengths)  # (B, T, D*H)
                hidden = self.encoders[m].hidden_size
                last = output[torch.arange(len(lengths)), lengths - 1]  # forward direction ends at the last real step
                vector = last if not self.encoders[m].bidirectional else torch.cat([last[:, :hidden], output[:, 0, hidden:]], -1)
            else:
                vector = self.encoders[m](self.projections[m](sequence), lengths)
            vectors[m] = self.dropout(vector)
        return self._combine(vectors)
