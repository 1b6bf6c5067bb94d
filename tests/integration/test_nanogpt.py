"""model=nanogpt (experiment=nanogpt) is nanoGPT's GPT: same parameter names, same outputs and
gradients as a plain PyTorch GPT written here, nanoGPT's init, and a tied head.

The reference follows the GPT-2 description as nanoGPT's model.py implements it, written
independently of the YAML and of the builder: attention is an explicit masked softmax, not
scaled_dot_product_attention; blocks are pre-LayerNorm with a 4x GELU MLP; the head is tied to
the token embedding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import runner
from runner.model.tensors import count_parameters

VOCAB, CONTEXT = 28, 32  # data=text: 28 characters, windows of 32
SMALL = ("experiment=nanogpt", "model.vars.n_embd=16", "model.vars.n_head=2")


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.n_head = n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = F.softmax(att.masked_fill(~allowed, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int = CONTEXT, vocab_size: int = VOCAB, bias: bool = True):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList([Block(n_embd, n_head, bias) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd, bias=bias),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1])
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)


def _reference_of(model: nn.Module, n_layer: int, n_head: int, n_embd: int, bias: bool = True) -> GPT:
    reference = GPT(n_layer, n_head, n_embd, bias=bias).to(next(model.parameters()).dtype)
    reference.load_state_dict(model.state_dict())  # strict: every name lines up
    return reference


def test_nanogpt_computes_what_a_plain_gpt_computes_outputs_and_gradients(compose):
    model = runner.build(compose(*SMALL, "trainer.dtype=float64"))
    reference = _reference_of(model, n_layer=2, n_head=2, n_embd=16)
    idx = torch.randint(0, VOCAB, (3, CONTEXT), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, VOCAB, (3 * CONTEXT,), generator=torch.Generator().manual_seed(2))
    out = model(idx)
    expected = reference(idx)
    assert out.shape == (3 * CONTEXT, VOCAB)  # one row per token, as the language_model task needs
    torch.testing.assert_close(out, expected.reshape(-1, VOCAB), rtol=0, atol=1e-12)
    F.cross_entropy(out, targets).backward()
    F.cross_entropy(expected.reshape(-1, VOCAB), targets).backward()
    ours = dict(model.named_parameters())
    theirs = dict(reference.named_parameters())
    assert set(ours) == set(theirs)  # the tied head appears once in each, under transformer.wte.weight
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name].grad, tensor.grad, rtol=0, atol=1e-12, msg=name)
    short = idx[:, :7]  # a shorter context reads the first rows of the position table
    torch.testing.assert_close(model(short), reference(short).reshape(-1, VOCAB), rtol=0, atol=1e-12)


def test_nanogpt_in_float32_agrees_to_float32_precision(compose):
    model = runner.build(compose(*SMALL))
    reference = _reference_of(model, n_layer=2, n_head=2, n_embd=16)
    idx = torch.randint(0, VOCAB, (2, CONTEXT), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model(idx), reference(idx).reshape(-1, VOCAB), rtol=0, atol=1e-6)


def test_nanogpt_init_is_nanogpts_and_the_head_is_tied(compose):
    n_layer = 3
    model = runner.build(compose("experiment=nanogpt", f"model.vars.n_layer={n_layer}"))
    assert model.get_parameter("lm_head.weight") is model.get_parameter("transformer.wte.weight")
    projection_std = 0.02 / math.sqrt(2 * n_layer)  # GPT-2's scaled residual projections
    seen = set()
    for name, tensor in model.named_parameters():
        seen.add(name)
        values = tensor.detach()
        if name.endswith("c_proj.weight"):
            assert values.std().item() == pytest.approx(projection_std, rel=0.1), name
            assert abs(values.mean().item()) < 4 * projection_std / math.sqrt(values.numel()), name  # mean 0
        elif ".ln_" in name and name.endswith(".weight"):
            assert torch.equal(values, torch.ones_like(values)), name
        elif name.endswith(".bias"):
            assert torch.equal(values, torch.zeros_like(values)), name
        else:  # every other Linear and Embedding weight, the position table included
            assert values.std().item() == pytest.approx(0.02, rel=0.1), name
    assert {f"transformer.h.{i}.{part}" for i in range(n_layer) for part in ("attn.c_proj.weight", "mlp.c_proj.weight")} <= seen
    assert "transformer.wpe.weight" in seen and "transformer.ln_f.weight" in seen


@pytest.mark.parametrize("n_layer", [1, 3])
def test_the_depth_is_a_model_variable_and_counts_match_the_plain_gpt(compose, n_layer):
    model = runner.build(compose(*SMALL, f"model.vars.n_layer={n_layer}"))
    assert sum(1 for name, _ in model.named_modules() if name.endswith("ln_1")) == n_layer  # one per block
    reference = GPT(n_layer, 2, 16)
    expected = sum(p.numel() for p in reference.parameters())  # the tied tensor once
    # by hand: wte + wpe + per block (2 LN, c_attn, c_proj, c_fc, c_proj) + ln_f
    d = 16
    assert expected == VOCAB * d + CONTEXT * d + n_layer * (4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)) + 2 * d
    assert count_parameters(model)["unique"] == expected


@pytest.mark.parametrize("n_layer", [1, 2, 3])
def test_names_are_nanogpts_at_every_depth(compose, n_layer):
    model = runner.build(compose(*SMALL, f"model.vars.n_layer={n_layer}"))
    _reference_of(model, n_layer=n_layer, n_head=2, n_embd=16)  # strict load_state_dict: every name lines up


def test_without_biases_the_names_still_line_up(compose):
    model = runner.build(compose(*SMALL, "model.vars.bias=false"))
    reference = _reference_of(model, n_layer=2, n_head=2, n_embd=16, bias=False)
    assert not any(name.endswith(".bias") for name in model.state_dict())
    idx = torch.randint(0, VOCAB, (2, CONTEXT), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model(idx), reference(idx).reshape(-1, VOCAB), rtol=0, atol=1e-6)


def test_experiment_nanogpt_trains_below_the_uniform_guess(compose, tmp_path):
    cfg = compose(*SMALL, "trainer.epochs=1", "data.num_samples=640")
    assert (cfg.data.name, cfg.model.name, cfg.init.name, cfg.optim.name) == ("text", "nanogpt", "nanogpt", "adamw")
    summary = runner.train(cfg, tmp_path)
    assert summary["steps"] == 640 * 0.8 / 64  # one epoch of the text windows
    assert summary["val_loss"] < math.log(VOCAB)  # better than guessing every character uniformly
    assert summary["parameters"]["unique"] == sum(p.numel() for p in GPT(2, 2, 16).parameters())
