"""A seeded synthetic grammar of short English-like sentences, served as next-character windows."""

from __future__ import annotations

import random

import torch

ALPHABET = "abcdefghijklmnopqrstuvwxyz ."
SUBJECTS = ["the cat", "a dog", "the bird", "my friend", "a small fox", "the old man"]
VERBS = ["sees", "likes", "chases", "finds", "follows", "hears"]
OBJECTS = ["the ball", "a red box", "the moon", "a quiet river", "the tall tree", "some bread"]
ADVERBS = ["", " today", " again", " at night", " slowly"]


def sentences(count: int, seed: int) -> str:
    """Returns `count` sentences drawn from the grammar with a seeded RNG."""
    rng = random.Random(seed)
    parts = []
    for _ in range(count):
        parts.append(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ADVERBS)}.")
    return " ".join(parts)


def grammar_windows(num_windows: int, context: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (windows, next-character targets), each (num_windows, context) of character ids."""
    if vocab != len(ALPHABET):
        from runner.errors import ConfigError, Problem

        raise ConfigError([Problem("data.num_outputs", f"the text data's vocabulary has {len(ALPHABET)} characters, got {vocab}")])
    text = sentences(max(64, num_windows // 4 + context), seed)
    ids = torch.tensor([ALPHABET.index(ch) for ch in text], dtype=torch.long)
    starts = torch.randint(0, len(ids) - context - 1, (num_windows,), generator=torch.Generator().manual_seed(seed))
    offsets = torch.arange(context)
    return ids[starts[:, None] + offsets], ids[starts[:, None] + offsets + 1]
