"""The architecture presets (model=resnet, model=vit, experiment=unet) compute what the same
architecture written by hand in plain PyTorch computes, and train.

The reference modules below are written from the papers' descriptions, independently of the YAML
and of the builder: each test copies our model's tensors into the reference in state_dict order
(same count, same shapes), then compares outputs in eval and train mode, BatchNorm's updated
running statistics, and gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import runner
from runner.model.tensors import count_parameters

DIGITS = 64  # the 8x8 digits, flat


# ---------------------------------------------------------------- the references, in plain PyTorch


class BasicBlock(nn.Module):
    """He et al. 2016: conv3x3-BN-ReLU-conv3x3-BN, plus the identity or a conv1x1(stride)+BN projection, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.projection = None
        if stride != 1 or cin != cout:
            self.projection = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.projection is None else self.projection(x)))


class ResNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2), BasicBlock(32, 32))
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x.view(-1, 1, 8, 8))))
        return self.head(self.blocks(x).mean(dim=(2, 3)))  # global average pool


class EncoderBlock(nn.Module):
    """A pre-norm transformer block: x + MHA(LN(x)), then x + W2 relu(W1 LN(x))."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.relu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    """Dosovitskiy et al. 2021: patches, a class token in front, learned positions, encoder, LN, head on the class token."""

    def __init__(self, dim: int = 32, patch: int = 2, depth: int = 2, heads: int = 4, hidden: int = 64, classes: int = 10):
        super().__init__()
        tokens = (8 // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x.view(-1, 1, 8, 8)).flatten(2).transpose(1, 2)  # (B, N, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    """Ronneberger et al. 2015, two levels: the decoder joins each upsampled map with the encoder's of its size."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.enc1, self.enc2, self.bottleneck = double_conv(1, c), double_conv(c, 2 * c), double_conv(2 * c, 4 * c)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = double_conv(4 * c, 2 * c)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = double_conv(2 * c, c)
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x.view(-1, 1, 8, 8))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([e2, self.up2(b)], dim=1))
        d1 = self.dec1(torch.cat([e1, self.up1(d2)], dim=1))
        return self.out(d1).flatten(1)


# Parameter counts by hand: conv k*k*cin*cout (+cout bias), BN 2c, Linear in*out+out, LN 2d.
def _conv(cin, cout, k, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


RESNET_PARAMS = (
    _conv(1, 16, 3, False) + 32
    + 2 * (_conv(16, 16, 3, False) + 32)
    + _conv(16, 32, 3, False) + _conv(32, 32, 3, False) + _conv(16, 32, 1, False) + 3 * 64
    + 2 * (_conv(32, 32, 3, False) + 64)
    + 32 * 10 + 10
)
VIT_PARAMS = (
    32 + 17 * 32 + _conv(1, 32, 2)
    + 2 * ((3 * 32 * 32 + 3 * 32) + (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 64)
    + 64 + 32 * 10 + 10
)
UNET_PARAMS = (
    _conv(1, 8, 3) + _conv(8, 8, 3) + _conv(8, 16, 3) + _conv(16, 16, 3) + _conv(16, 32, 3) + _conv(32, 32, 3)
    + _conv(32, 16, 2) + _conv(32, 16, 3) + _conv(16, 16, 3)
    + _conv(16, 8, 2) + _conv(16, 8, 3) + _conv(8, 8, 3) + _conv(8, 1, 1)
)

CASES = {
    "resnet": ("model=resnet", ResNet, RESNET_PARAMS, (DIGITS, 10)),
    "vit": ("model=vit", ViT, VIT_PARAMS, (DIGITS, 10)),
    "unet": ("experiment=unet", UNet, UNET_PARAMS, (DIGITS, DIGITS)),
}


# ---------------------------------------------------------------- helpers


def _scramble(model: nn.Module, seed: int = 0) -> None:
    """Perturbs every floating tensor (BN affine and running statistics, the ViT's zero tokens
    included), so that no tensor the comparison reads still holds a value it could ignore."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
                if name.endswith("running_var"):
                    tensor.abs_().clamp_(min=0.1)


def _copy_into(reference: nn.Module, ours: nn.Module) -> None:
    """Loads our tensors into the reference by position: same count, same shapes."""
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert len(theirs) == len(mine), (list(theirs), list(mine))
    for (their_name, their), (my_name, my) in zip(theirs.items(), mine.items()):
        assert their.shape == my.shape, f"{their_name} {tuple(their.shape)} vs {my_name} {tuple(my.shape)}"
    reference.load_state_dict(dict(zip(theirs, mine.values())))


def _pair(compose, name: str) -> tuple[nn.Module, nn.Module]:
    choice, reference_cls, _, _ = CASES[name]
    ours = runner.build(compose(choice))
    _scramble(ours)
    reference = reference_cls()
    _copy_into(reference, ours)
    return ours, reference


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("name", list(CASES))
def test_parameter_counts_match_the_reference_and_the_hand_count(compose, name):
    choice, reference_cls, expected, _ = CASES[name]
    ours = runner.build(compose(choice))
    assert count_parameters(ours)["unique"] == expected
    assert sum(p.numel() for p in reference_cls().parameters()) == expected
    assert len(list(ours.parameters())) == len(list(reference_cls().parameters()))


@pytest.mark.parametrize("name", list(CASES))
def test_eval_outputs_equal_the_reference(compose, name):
    ours, reference = _pair(compose, name)
    ours.eval(), reference.eval()
    x = torch.rand(7, DIGITS, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = ours(x)
        assert out.shape == (7, CASES[name][3][1])
        torch.testing.assert_close(out, reference(x))


@pytest.mark.parametrize("name", list(CASES))
def test_train_mode_outputs_statistics_and_gradients_equal_the_reference(compose, name):
    # Train mode is deterministic here: BatchNorm uses batch statistics, the ViT's dropout is 0.
    ours, reference = _pair(compose, name)
    ours.train(), reference.train()
    x = torch.rand(16, DIGITS, generator=torch.Generator().manual_seed(2))
    out, expected = ours(x), reference(x)
    torch.testing.assert_close(out, expected)
    out.square().mean().backward()
    expected.square().mean().backward()
    for (their_name, their), (my_name, my) in zip(reference.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(my.grad, their.grad, msg=lambda m: f"{my_name} vs {their_name}: {m}")
    for (their_name, their), (my_name, my) in zip(reference.named_buffers(), ours.named_buffers()):
        torch.testing.assert_close(my, their, msg=lambda m: f"{my_name} vs {their_name}: {m}")  # running stats moved alike


def test_resnet_blocks_use_the_shortcut_they_declare(compose):
    ours = runner.build(compose("model=resnet"))
    names = {n for n, _ in ours.named_parameters()}
    assert {"block2.shortcut.weight", "block2.shortcut_bn.weight"} <= names
    assert not any(n.startswith(("block1.shortcut", "block3.shortcut")) for n in names)  # identity shortcuts
    assert sum(isinstance(m, nn.BatchNorm2d) for m in ours.modules()) == 8


def test_vit_tokens_are_zeros_by_default_and_an_init_rule_reaches_them(compose):
    ours = runner.build(compose("model=vit"))
    assert ours.cls_token.shape == (1, 1, 32) and ours.pos_embedding.shape == (1, 17, 32)
    assert not ours.cls_token.any() and not ours.pos_embedding.any()  # the default init: zeros
    assert ours.cls_token.requires_grad and ours.pos_embedding.requires_grad
    rules = "init.rules=[{match: cls_token, fn: normal_, std: 0.02}, {match: pos_embedding, fn: trunc_normal_, std: 0.02, a: -0.04, b: 0.04}]"
    ours = runner.build(compose("model=vit", rules))
    assert 0.01 < ours.pos_embedding.std() < 0.03 and ours.pos_embedding.abs().max() <= 0.04
    assert ours.cls_token.any()


def test_vit_attends_across_tokens(compose):
    # The head reads the class token, which sees the patches only through attention: changing the last
    # pixel (the last patch) must still move the logits.
    ours = runner.build(compose("model=vit"))
    ours.eval()
    x = torch.rand(1, DIGITS, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[0, 63] += 1.0
    with torch.no_grad():
        assert not torch.allclose(ours(x), ours(y))


def test_unet_skips_carry_full_resolution(compose):
    # With the bottleneck's last conv zeroed, the output still depends on the input through the skips.
    ours = runner.build(compose("experiment=unet"))
    with torch.no_grad():
        ours.bottleneck.conv2.weight.zero_()
        ours.bottleneck.conv2.bias.zero_()
    x = torch.rand(2, DIGITS, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = ours(x)
        assert not torch.allclose(out, ours(torch.zeros_like(x)))


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("name", list(CASES))
def test_trains_a_few_steps(compose, tmp_path, name):
    cfg = compose(CASES[name][0], "trainer.max_steps=3")
    before = runner.build(cfg).state_dict()
    summary = runner.train(cfg, tmp_path)
    assert summary["steps"] == 3
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["val_loss"])
    after = runner.load(tmp_path).state_dict()
    assert list(after) == list(before)
    unchanged = [k for k, v in after.items() if v.is_floating_point() and torch.equal(v, before[k])]
    assert unchanged == [], f"not trained: {unchanged}"
