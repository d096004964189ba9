"""SAEBench's linear probe on mean-pooled activations (`probe_training.train_probe_gpu`).

logit = w · x + b on the raw pooled activation (no standardisation); AdamW, binary
cross-entropy plus `l1 · Σ|w|`, a fixed batch size, a fixed number of epochs; the probe kept is
that of the epoch with the best test accuracy (SAEBench's early stopping with patience equal to
the epochs: it selects the epoch on the test set, and so does this, to measure the same thing).
A probe predicts the positive class when its logit is > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LinearProbe:
    """A trained probe."""

    weight: Tensor
    """`[d]` float32."""
    bias: float
    test_accuracy: float
    """Its accuracy on the test set it was selected on."""

    def logits(self, x: Tensor) -> Tensor:
        return x.float() @ self.weight + self.bias

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        return float(((self.logits(x) > 0) == y.bool()).float().mean())


def train_probe(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    batch_size: int = 16,
    epochs: int = 20,
    lr: float = 1e-3,
    l1: float = 1e-3,
    seed: int = 0,
    weight_decay: float = 0.01,
) -> LinearProbe:
    """A probe of `y` (0/1) from `x [N, d]`, seeded (initialisation and batch order).

    The gradient of the mean binary cross-entropy plus `l1 · Σ|w|` is written out and AdamW
    (torch's defaults: betas 0.9/0.999, eps 1e-8, decoupled weight decay 0.01 on w and b) is
    applied by hand: the same updates as `torch.optim.AdamW` on an `nn.Linear`, without
    autograd's per-step cost (SAEBench's 5,000 steps per probe).
    """
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = x_train.float(), y_train.float()
    d = x_train.shape[1]
    bound = 1 / d**0.5  # nn.Linear's default initialisation
    # w and b as one vector: the last entry multiplies a constant 1 column.
    theta = torch.cat(
        [(torch.rand(d, generator=gen) * 2 - 1), (torch.rand(1, generator=gen) * 2 - 1)]
    )
    theta *= bound
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    best = (-1.0, theta[:d].clone(), float(theta[d]))
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x_train[idx], y_train[idx]
            residual = (torch.sigmoid(xb @ theta[:d] + theta[d]) - yb) / len(idx)
            grad = torch.cat([xb.T @ residual, residual.sum().reshape(1)])
            if l1:
                grad[:d] += l1 * torch.sign(theta[:d])
            step += 1
            theta *= 1 - lr * weight_decay
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            m_hat = m / (1 - beta1**step)
            denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
            theta.addcdiv_(m_hat, denom, value=-lr)
        acc = LinearProbe(theta[:d], float(theta[d]), 0.0).accuracy(x_test, y_test)
        if acc > best[0]:
            best = (acc, theta[:d].clone(), float(theta[d]))
    return LinearProbe(best[1], best[2], best[0])
