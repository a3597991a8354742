"""KEMDy20 models (seed 001): the node encoders and the 3-branch temporal GNN.

NodeEncoders: EDA and TEMP windows (B, 11) -> 1-D ResNet-18 each; 13-MFCC of the matching 2.75 s (B, 13, T)
-> 2-D ResNet-18; each -> 8*width (512 at the default width 64). Heads: per stream Linear(F->128)+ReLU ->
Linear(128->7), and a fusion Linear(384->7) on the three 128-d hidden vectors; train_gnn.py sums the four
cross-entropies on these logits.

TemporalGNN (SPEC section 2; 139,045 parameters at the defaults):
    h0 = ReLU(BN(Lin(eda) + Lin(temp) + Lin(audio)))                        three Linear(512->64)
    per branch b in (attr >= 0, attr <= 0, all edges):
        h = dropout(ReLU(BN_b(EdgeConv_b(h0))))                            max of MLP[h_i, h_j - h_i], 128->64->64
        h = dropout(ReLU(BN(SAGE(h))))                                      SAGE 64->16 and its BN shared by branches
        logits_b = SAGE_b(h)                                                16->7
    logits = sum of the three branch logits
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.graph import EdgeConv, SAGEConv
from preprocess.spell_graph import edge_sets


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, *, stride, dims):
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = norm(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (BasicBlocks [2, 2, 2, 2], widths w, 2w, 4w, 8w, 3-tap convs) over (B, 1, L) or (B, 1, H, W)
    -> (B, 8w), global average pooled. The 1-D stem keeps the 11 samples; the 2-D stem halves time twice
    (stride 2 conv, then max-pool) since the MFCC has ~276 frames but only 13 coefficients."""

    def __init__(self, *, dims, width=64):
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        stride, pool = (1, nn.Identity()) if dims == 1 else ((1, 2), nn.MaxPool2d((1, 2)))
        self.stem = nn.Sequential(conv(1, width, 3, stride=stride, padding=1, bias=False), norm(width), nn.ReLU(inplace=True), pool)
        widths = [width, 2 * width, 4 * width, 8 * width]
        blocks, in_channels = [], width
        for stage, out_channels in enumerate(widths):
            for repeat in range(2):
                blocks.append(BasicBlock(in_channels, out_channels, stride=2 if stage and not repeat else 1, dims=dims))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = widths[-1]

    def forward(self, x):
        return self.blocks(self.stem(x)).flatten(2).mean(-1)  # (B, C, ...) -> (B, C)


class NodeEncoders(nn.Module):
    STREAMS = ("eda", "temp", "audio")

    def __init__(self, *, width=64, num_classes=7, head_dim=128, n_mfcc=13):
        super().__init__()
        self.encoders = nn.ModuleDict({"eda": ResNet18(dims=1, width=width), "temp": ResNet18(dims=1, width=width),
                                       "audio": ResNet18(dims=2, width=width)})
        feature_dim = self.encoders["eda"].out_dim
        self.hidden = nn.ModuleDict({name: nn.Sequential(nn.Linear(feature_dim, head_dim), nn.ReLU()) for name in self.STREAMS})
        self.heads = nn.ModuleDict({name: nn.Linear(head_dim, num_classes) for name in self.STREAMS})
        self.fusion = nn.Linear(3 * head_dim, num_classes)
        # MFCC standardisation per coefficient, fitted on training nodes (train_gnn.py sets them)
        self.register_buffer("mfcc_mean", torch.zeros(n_mfcc, 1))
        self.register_buffer("mfcc_std", torch.ones(n_mfcc, 1))
        self.feature_dim = feature_dim

    def features(self, eda, temp, mfcc):
        """eda, temp (B, 11), mfcc (B, 13, T) -> {stream: (B, F)}."""
        mfcc = (mfcc - self.mfcc_mean) / self.mfcc_std
        return {"eda": self.encoders["eda"](eda[:, None]), "temp": self.encoders["temp"](temp[:, None]),
                "audio": self.encoders["audio"](mfcc[:, None])}

    def forward(self, eda, temp, mfcc):
        """-> ({"eda", "temp", "audio", "fusion"}: logits (B, 7) each, features (B, 3, F))."""
        features = self.features(eda, temp, mfcc)
        hidden = {name: self.hidden[name](features[name]) for name in self.STREAMS}
        logits = {name: self.heads[name](hidden[name]) for name in self.STREAMS}
        logits["fusion"] = self.fusion(torch.cat([hidden[name] for name in self.STREAMS], 1))
        return logits, torch.stack([features[name] for name in self.STREAMS], 1)


class TemporalGNN(nn.Module):
    def __init__(self, *, in_dim=512, hidden_dim=64, mid_dim=16, num_classes=7, dropout=0.2):
        super().__init__()
        self.inputs = nn.ModuleList(nn.Linear(in_dim, hidden_dim) for _ in NodeEncoders.STREAMS)
        self.input_norm = nn.BatchNorm1d(hidden_dim)
        self.edge_convs = nn.ModuleList(EdgeConv(hidden_dim, hidden_dim, hidden_dim) for _ in range(3))
        self.edge_norms = nn.ModuleList(nn.BatchNorm1d(hidden_dim) for _ in range(3))
        self.shared_sage = SAGEConv(hidden_dim, mid_dim)
        self.shared_norm = nn.BatchNorm1d(mid_dim)
        self.outputs = nn.ModuleList(SAGEConv(mid_dim, num_classes) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, edge_index, edge_attr):
        """x (N, 3, in_dim) eda/temp/audio features, edge_index (2, E), edge_attr (E,) -> logits (N, classes)."""
        h0 = F.relu(self.input_norm(sum(layer(x[:, stream]) for stream, layer in enumerate(self.inputs))))  # (N, hidden)
        logits = 0
        for branch, edges in enumerate(edge_sets(edge_index, edge_attr)):
            h = self.dropout(F.relu(self.edge_norms[branch](self.edge_convs[branch](h0, edges))))
            h = self.dropout(F.relu(self.shared_norm(self.shared_sage(h, edges))))
            logits = logits + self.outputs[branch](h, edges)
        return logits


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
