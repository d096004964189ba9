"""A hand-built SHIFT case whose outcome is known: a one-hook "model" over a tiny vocabulary
whose token vectors carry a profession direction p and a gender direction g (orthonormal, in a
seeded random basis, so no coordinate is special), and an SAE whose latents are ±p, ±g and a
few unrelated directions. Every text has a pronoun; only some have a profession cue, so a probe
trained where the two labels agree leans on gender. Zero-ablating the two gender latents takes
g out of every token (the SAE's error is 0 along g), so the biased probe can only read p."""

from __future__ import annotations

import random

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from saelab.circuits.shift_data import Bio, ShiftData

HOOK = "blocks.0.hook_resid_post"
D = 8
WORDS = ["<bos>", "he", "she", "lectures", "nurses", "works", "in", "town", "today", "the"]
GENDER_LATENTS = {2, 3}


class ToyTokenizer:
    bos_token_id = 0
    eos_token_id = 0
    all_special_ids = [0]

    def __call__(self, text, add_special_tokens: bool = False) -> dict:
        if isinstance(text, list):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        return {"input_ids": [WORDS.index(w) for w in text.split()]}

    def decode(self, ids) -> str:
        return " ".join(WORDS[i] for i in ids)


class ToyBridge(nn.Module):
    """tokens → fixed token vectors at `blocks.0.hook_resid_post` (the only layer)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(table, freeze=True)
        self.hook = HookPoint()
        self.hook_dict = {HOOK: self.hook}

    def forward(self, tokens, return_type=None, stop_at_layer=None):
        return self.hook(self.embed(tokens))


class ToyModel:
    name = "toy"
    n_layers = 1
    d_model = D
    weights_sha256 = "toy"

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
        self.basis = q.T  # rows: orthonormal directions
        p, gdir = self.basis[0], self.basis[1]
        table = 0.3 * torch.randn(len(WORDS), 2, generator=g) @ self.basis[2:4]
        table[0] = 0
        table[WORDS.index("he")] += 3 * gdir
        table[WORDS.index("she")] -= 3 * gdir
        table[WORDS.index("lectures")] += 2 * p
        table[WORDS.index("nurses")] -= 2 * p
        self.bridge = ToyBridge(table)
        self.tokenizer = ToyTokenizer()

    def validate_hooks(self, hooks):
        assert all(h == HOOK for h in hooks), hooks


def toy_sae(model: ToyModel):
    """Latents 0, 1: ±p; 2, 3: ±g (the gender ones); 4, 5: ±(a direction no token uses)."""
    from saelab.sae.registry import build_sae, make_config

    b = model.basis
    dirs = torch.stack([b[0], -b[0], b[1], -b[1], b[5], -b[5]])
    sae = build_sae(make_config("topk", d_sae=len(dirs), k=len(dirs), seed=0), D)
    with torch.no_grad():
        sae.W_dec.copy_(dirs)
        sae.encoder_weight.copy_(dirs)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def toy_text(rng: random.Random, profession: int, gender: int, cue: bool) -> str:
    words = ["he" if gender == 0 else "she", "works", "in", "town"]
    if cue:
        words.append("lectures" if profession == 0 else "nurses")
    words += rng.sample(["today", "the", "in", "town"], 2)
    return " ".join(words)


def toy_data(n: int = 80, cue_share: float = 0.7, seed: int = 0) -> ShiftData:
    rng = random.Random(seed)

    def group(p: int, g: int, k: int) -> list[Bio]:
        return [Bio(toy_text(rng, p, g, rng.random() < cue_share), p, g) for _ in range(k)]

    def balanced(k: int) -> list[Bio]:
        rows = [b for p in (0, 1) for g in (0, 1) for b in group(p, g, k // 4)]
        rng.shuffle(rows)
        return rows

    biased = group(0, 0, n // 2) + group(1, 1, n // 2)
    rng.shuffle(biased)
    return ShiftData(biased, balanced(n), balanced(n), balanced(n), ("professor", "nurse"), "toy")
