"""RepVGG block (Ding et al. 2021) as MME2E / FV2ES use it, and its fusion into one 3x3 conv for inference.

Training form:  y = ReLU(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)), the identity branch only when
in_channels == out_channels and stride == 1. In eval mode each branch is linear, so the sum equals one
3x3 conv with bias: fuse_repvgg(model) returns a deep copy in which every RepVGGBlock is replaced by
that conv + ReLU. The model passed in is never touched (FV2ES fused in place after the first epoch,
which silently froze its visual CNN); keep training the original and fuse a fresh copy for inference.
Submodule names follow the RepVGG reference code (rbr_dense, rbr_1x1, rbr_identity).
"""
import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn(in_channels: int, out_channels: int, *, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels))


class RepVGGBlock(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1):
        super().__init__()
        self.rbr_dense = _conv_bn(in_channels, out_channels, kernel_size=3, stride=stride)
        self.rbr_1x1 = _conv_bn(in_channels, out_channels, kernel_size=1, stride=stride)
        has_identity = in_channels == out_channels and stride == 1
        self.rbr_identity = nn.BatchNorm2d(in_channels) if has_identity else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return F.relu(out)


class FusedRepVGGBlock(nn.Module):
    """The inference form of a RepVGGBlock: ReLU(conv3x3(x) + bias)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))


def _fold_bn(kernel: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """BN(conv(x, kernel)) in eval mode == conv(x, kernel * s) + (beta - mean * s), s = gamma / std."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    return kernel * scale[:, None, None, None], bn.bias - bn.running_mean * scale


@torch.no_grad()
def fused_conv(block: RepVGGBlock) -> nn.Conv2d:
    """The single 3x3 conv (with bias) equal to `block` in eval mode, before the ReLU."""
    dense = block.rbr_dense[0]
    kernel, bias = _fold_bn(dense.weight, block.rbr_dense[1])  # (C_out, C_in, 3, 3), (C_out,)
    kernel_1x1, bias_1x1 = _fold_bn(block.rbr_1x1[0].weight, block.rbr_1x1[1])  # (C_out, C_in, 1, 1)
    kernel = kernel + F.pad(kernel_1x1, [1, 1, 1, 1])  # the 1x1 kernel sits at the centre tap
    bias = bias + bias_1x1
    if block.rbr_identity is not None:
        # identity = 3x3 conv whose kernel is 1 at the centre tap of channel c -> c
        identity = torch.zeros_like(kernel)
        channels = torch.arange(kernel.shape[0], device=kernel.device)
        identity[channels, channels, 1, 1] = 1.0
        kernel_id, bias_id = _fold_bn(identity, block.rbr_identity)
        kernel = kernel + kernel_id
        bias = bias + bias_id
    conv = nn.Conv2d(dense.in_channels, dense.out_channels, 3, stride=dense.stride, padding=1, bias=True,
                     device=kernel.device, dtype=kernel.dtype)
    conv.weight.copy_(kernel)
    conv.bias.copy_(bias)
    return conv


def fuse_repvgg(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with every RepVGGBlock replaced by its FusedRepVGGBlock; `model` is unchanged.

    Equal to `model` in eval mode only (fusion bakes in the BN running statistics); `model` may be a
    RepVGGBlock itself.
    """
    if isinstance(model, RepVGGBlock):
        return FusedRepVGGBlock(fused_conv(model))
    fused = copy.deepcopy(model)
    blocks = [(name, module) for name, module in fused.named_modules() if isinstance(module, RepVGGBlock)]
    for name, block in blocks:
        parent_name, _, child_name = name.rpartition(".")
        parent = fused.get_submodule(parent_name)
        setattr(parent, child_name, FusedRepVGGBlock(fused_conv(block)))
    return fused
