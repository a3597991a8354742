"""Graph convolutions on an edge list, in plain PyTorch (no torch_geometric).

edge_index is a LongTensor (2, E) as in PyTorch Geometric: row 0 holds the source node j, row 1 the
target node i, and messages flow j -> i, so node i aggregates over its in-neighbours
N(i) = {j : (j, i) is an edge}. Self-loops and duplicate edges count like any other edge (a duplicate
edge is a repeated neighbour, as in PyG). A node with no in-edges aggregates 0, as in PyG.

Determinism: node features are gathered with index_select, whose backward is index_add_; x[index]
would backprop through index_put_(accumulate=True), which on a multi-threaded CPU sums in a different
order from run to run. EdgeConv's max does not depend on order at all. So forward and backward are
bit-identical from run to run on CPU; on CUDA index_add_ uses atomic adds unless
torch.use_deterministic_algorithms(True) is set.
"""
import torch
from torch import Tensor, nn


def _check_edge_index(edge_index: Tensor) -> None:
    # shape and dtype only: a range check would force a GPU sync on every call
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.long:
        raise ValueError(f"edge_index must be a LongTensor (2, E), got {edge_index.dtype} {tuple(edge_index.shape)}")


class EdgeConv(nn.Module):
    """EdgeConv (Wang et al., DGCNN) with max aggregation: x_i' = max_{j in N(i)} MLP([x_i, x_j - x_i]).

    MLP = Linear(2 * in_dim -> hidden_dim) -> ReLU -> Linear(hidden_dim -> out_dim), held in `mlp`
    (PyG names the same Sequential `nn`: rename nn.* -> mlp.* to load its state dicts).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.mlp = nn.Sequential(nn.Linear(2 * in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """x (N, in_dim), edge_index (2, E) -> (N, out_dim)."""
        _check_edge_index(edge_index)
        source, target = edge_index
        target_features = x.index_select(0, target)  # (E, in_dim)
        source_features = x.index_select(0, source)  # (E, in_dim)
        messages = self.mlp(torch.cat([target_features, source_features - target_features], dim=1))  # (E, out_dim)
        # include_self=False: the zeros only show through for nodes that receive no message
        aggregated = messages.new_zeros(x.shape[0], self.out_dim)
        return aggregated.scatter_reduce(0, target[:, None].expand_as(messages), messages,
                                         reduce="amax", include_self=False)


class SAGEConv(nn.Module):
    """GraphSAGE with mean aggregation: x_i' = lin_l(mean_{j in N(i)} x_j) + lin_r(x_i).

    As in PyG, lin_l carries the bias and lin_r has none; root_weight=False drops the lin_r term.
    """

    def __init__(self, in_dim: int, out_dim: int, *, root_weight: bool = True, bias: bool = True):
        super().__init__()
        self.lin_l = nn.Linear(in_dim, out_dim, bias=bias)
        self.lin_r = nn.Linear(in_dim, out_dim, bias=False) if root_weight else None

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """x (N, in_dim), edge_index (2, E) -> (N, out_dim)."""
        num_nodes = x.shape[0]
        _check_edge_index(edge_index)
        source, target = edge_index
        source_features = x.index_select(0, source)  # (E, in_dim)
        neighbour_sum = x.new_zeros(num_nodes, x.shape[1]).index_add_(0, target, source_features)  # (N, in_dim)
        # index_add_ rather than bincount, which would sync with the GPU to size its output
        in_degree = x.new_zeros(num_nodes).index_add_(0, target, x.new_ones(target.shape[0])).clamp(min=1)  # (N,)
        out = self.lin_l(neighbour_sum / in_degree[:, None])
        if self.lin_r is not None:
            out = out + self.lin_r(x)
        return out
