"""models/repvgg.py: the fused copy equals the block in eval mode, and fusing leaves the original trainable."""
import pytest
import torch
from torch import nn

from models.repvgg import FusedRepVGGBlock, RepVGGBlock, fuse_repvgg

TOL = dict(atol=1e-5, rtol=1e-5)


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.py


def warm_up_batch_norms(model: nn.Module, channels: int) -> None:
    """Random BN affine parameters and a few training-mode passes, so that running stats are not (0, 1)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.momentum = 0.5
        model.train()
        for _ in range(3):
            model(torch.randn(4, channels, 9, 11) * 2 + 1)


@pytest.mark.parametrize("in_channels,out_channels,stride", [(8, 8, 1), (8, 16, 1), (8, 8, 2), (8, 16, 2)])
def test_fused_block_equals_block_in_eval(in_channels, out_channels, stride):
    torch.manual_seed(0)
    block = RepVGGBlock(in_channels, out_channels, stride=stride)
    assert (block.rbr_identity is not None) == (in_channels == out_channels and stride == 1)
    warm_up_batch_norms(block, in_channels)
    block.eval()
    fused = fuse_repvgg(block)
    assert isinstance(fused, FusedRepVGGBlock)
    x = torch.randn(2, in_channels, 9, 11)  # odd sizes: the 1x1 and 3x3 branches must align under stride 2
    with torch.no_grad():
        expected = block(x)
        torch.testing.assert_close(fused(x), expected, **TOL)
    assert expected.shape == (2, out_channels, -(-9 // stride), -(-11 // stride))


def small_visual_cnn() -> nn.Sequential:
    """The shape of the FV2ES visual stem, scaled down: stem conv, RepVGG blocks, nested containers."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
        RepVGGBlock(8, 8), RepVGGBlock(8, 8),
        nn.Sequential(RepVGGBlock(8, 16, stride=2), nn.MaxPool2d(2)),
        RepVGGBlock(16, 16))


def test_fuse_repvgg_copies_and_leaves_original_trainable():
    torch.manual_seed(0)
    model = small_visual_cnn()
    warm_up_batch_norms(model, 3)
    model.eval()
    state_before = {name: value.clone() for name, value in model.state_dict().items()}

    fused = fuse_repvgg(model)
    assert sum(isinstance(m, FusedRepVGGBlock) for m in fused.modules()) == 4
    assert not any(isinstance(m, RepVGGBlock) for m in fused.modules())
    assert sum(isinstance(m, RepVGGBlock) for m in model.modules()) == 4
    for name, value in model.state_dict().items():  # parameters and BN statistics untouched
        assert torch.equal(value, state_before[name]), name
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected, fused_before = model(x), fused(x)
    torch.testing.assert_close(fused_before, expected, **TOL)

    # the original still trains, and training it does not leak into the fused copy
    model.train()
    assert all(param.requires_grad for param in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    model(x).square().mean().backward()
    assert all(param.grad is not None and param.grad.abs().sum() > 0 for param in model.parameters())
    optimizer.step()
    assert not torch.equal(model[3].rbr_dense[0].weight, state_before["3.rbr_dense.0.weight"])
    with torch.no_grad():
        assert torch.equal(fused(x), fused_before)
