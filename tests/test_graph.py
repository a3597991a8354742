"""models/graph.py against brute-force per-node loops over the edge list (outputs and gradients)."""
import pytest
import torch

from models.graph import EdgeConv, SAGEConv

TOL = dict(atol=1e-5, rtol=1e-5)
NUM_NODES, IN_DIM = 12, 5


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.py


def random_graph(seed: int) -> torch.Tensor:
    """(2, E) edges j -> i with self-loops and duplicate edges; nodes 9 and 10 only send (no in-edges),
    node 11 is isolated."""
    generator = torch.Generator().manual_seed(seed)
    sources = torch.randint(0, 11, (30,), generator=generator)
    targets = torch.randint(0, 9, (30,), generator=generator)
    edge_index = torch.stack([sources, targets])
    self_loops = torch.tensor([[2, 5], [2, 5]])
    duplicates = edge_index[:, :4]
    return torch.cat([edge_index, self_loops, duplicates], dim=1)


def in_neighbours(edge_index: torch.Tensor, node: int) -> list[int]:
    return [int(source) for source, target in edge_index.t() if int(target) == node]


def edge_conv_by_loop(conv: EdgeConv, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    rows = []
    for i in range(x.shape[0]):
        messages = [conv.mlp(torch.cat([x[i], x[j] - x[i]])) for j in in_neighbours(edge_index, i)]
        rows.append(torch.stack(messages).max(dim=0).values if messages else x.new_zeros(conv.out_dim))
    return torch.stack(rows)


def sage_conv_by_loop(conv: SAGEConv, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    rows = []
    for i in range(x.shape[0]):
        neighbours = [x[j] for j in in_neighbours(edge_index, i)]
        neighbour_mean = torch.stack(neighbours).mean(dim=0) if neighbours else x.new_zeros(x.shape[1])
        row = conv.lin_l(neighbour_mean)
        if conv.lin_r is not None:
            row = row + conv.lin_r(x[i])
        rows.append(row)
    return torch.stack(rows)


def assert_matches_loop(conv, by_loop, seed):
    """Same outputs, same gradients w.r.t. x and every parameter (a duplicate edge is a tie in the max:
    the total gradient it receives is the same however a tie is split)."""
    torch.manual_seed(seed)
    edge_index = random_graph(seed)
    x = torch.randn(NUM_NODES, IN_DIM, requires_grad=True)
    x_loop = x.detach().clone().requires_grad_()
    output, expected = conv(x, edge_index), by_loop(conv, x_loop, edge_index)
    torch.testing.assert_close(output, expected, **TOL)
    cotangent = torch.randn_like(output)
    output_grads = torch.autograd.grad((output * cotangent).sum(), [x, *conv.parameters()])
    loop_grads = torch.autograd.grad((expected * cotangent).sum(), [x_loop, *conv.parameters()])
    for output_grad, loop_grad in zip(output_grads, loop_grads):
        torch.testing.assert_close(output_grad, loop_grad, **TOL)
        assert output_grad.abs().sum() > 0
    return output


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edge_conv_matches_loop(seed):
    torch.manual_seed(seed)
    conv = EdgeConv(IN_DIM, 8, 6)
    output = assert_matches_loop(conv, edge_conv_by_loop, seed)
    assert torch.equal(output[9:], torch.zeros(3, 6))  # no in-edges -> 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("root_weight,bias", [(True, True), (False, True), (True, False)])
def test_sage_conv_matches_loop(seed, root_weight, bias):
    torch.manual_seed(seed)
    conv = SAGEConv(IN_DIM, 6, root_weight=root_weight, bias=bias)
    output = assert_matches_loop(conv, sage_conv_by_loop, seed)
    if not root_weight and bias:  # no in-edges and no root term: just the bias
        torch.testing.assert_close(output[11], conv.lin_l.bias)
    no_edges = torch.zeros(2, 0, dtype=torch.long)
    torch.testing.assert_close(conv(torch.randn(3, IN_DIM), no_edges)[:, :0], torch.zeros(3, 0))
    assert conv(torch.randn(3, IN_DIM), no_edges).shape == (3, 6)


def test_state_dict_names_follow_pyg():
    assert set(SAGEConv(4, 3).state_dict()) == {"lin_l.weight", "lin_l.bias", "lin_r.weight"}
    assert set(EdgeConv(4, 8, 3).state_dict()) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}


@pytest.mark.parametrize("conv", [EdgeConv(16, 32, 32), SAGEConv(16, 16)], ids=["edge", "sage"])
def test_bit_identical_across_runs(conv):
    generator = torch.Generator().manual_seed(0)
    num_nodes = 500
    x = torch.randn(num_nodes, 16, generator=generator)
    edge_index = torch.randint(0, num_nodes, (2, 5000), generator=generator)
    runs = []
    torch.set_num_threads(2)  # the parallel kernels are the ones that could reorder sums
    for _ in range(4):  # the order in which threads finish varies: one repeat is not enough to see it
        x_run = x.clone().requires_grad_()
        output = conv(x_run, edge_index)
        output.square().sum().backward()
        runs.append((output.detach(), x_run.grad))
    torch.set_num_threads(1)
    for output, x_grad in runs[1:]:
        assert torch.equal(output, runs[0][0]) and torch.equal(x_grad, runs[0][1])


def test_rejects_malformed_edge_index():
    with pytest.raises(ValueError):
        SAGEConv(4, 3)(torch.randn(5, 4), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        EdgeConv(4, 8, 3)(torch.randn(5, 4), torch.zeros(2, 2))
