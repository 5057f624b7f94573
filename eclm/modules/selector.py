"""The unified module selector (router) and noisy top-k gating.

One small embedding network looks at the raw input once and a linear head per module layer gives
logits over that layer's modules, so a device can score modules on its own data without running
the big model (ECLM, arXiv 2311.11083; docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ModuleSelector(nn.Module):
    """Embedding CNN + one routing head (and one noise head) per module layer.

    Args:
        layer_sizes: Number of modules N_l of each layer.
        in_chans: Input channels.
        width: Channels of the first embedding conv (the second has ``2 * width``).
        embed_dim: Size of the shared routing feature ``h``.
    """

    def __init__(self, layer_sizes: list[int], in_chans: int = 3, width: int = 16, embed_dim: int = 64) -> None:
        super().__init__()
        self.layer_sizes = list(layer_sizes)
        self.embed = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, embed_dim),
            nn.ReLU(inplace=True),
        )
        self.heads = nn.ModuleList(nn.Linear(embed_dim, n) for n in layer_sizes)
        self.noise = nn.ModuleList(nn.Linear(embed_dim, n) for n in layer_sizes)
        for head in list(self.heads) + list(self.noise):
            nn.init.zeros_(head.weight)  # start uniform: the dense model is the original one
            nn.init.zeros_(head.bias)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Return per-layer routing logits ``(B, N_l)`` and noise scales ``(B, N_l)``."""
        h = self.embed(x)
        return [head(h) for head in self.heads], [F.softplus(n(h)) for n in self.noise]

    def probabilities(self, x: Tensor) -> list[Tensor]:
        """Per-layer softmax over modules ``(B, N_l)`` (no noise): the importance signal."""
        logits, _ = self(x)
        return [lg.softmax(dim=-1) for lg in logits]


@dataclass
class Routing:
    """Gating of one batch for every layer.

    Attributes:
        gates: Per layer ``(B, N_l)`` gate values used in the forward pass.
        probs: Per layer clean softmax probabilities ``(B, N_l)``.
        mask: Per layer ``(B, N_l)`` 0/1 active-module mask.
    """

    gates: list[Tensor]
    probs: list[Tensor]
    mask: list[Tensor]


def noisy_top_k(
    logits: Tensor,
    noise_scale: Tensor | None,
    k: int,
    *,
    noisy: bool,
    straight_through: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Noisy top-k gating (Shazeer et al. 2017) with mean-1 gate normalisation.

    Gates over the active set are ``k * softmax(top-k logits)``, so they average to 1 and a
    uniform router with ``k = N`` gives exactly unit gates: the dense modular model equals the
    original block. With ``straight_through`` the forward value is the 0/1 mask (what an
    extracted sub-model computes) while gradients flow to the router through the soft gates.

    Args:
        logits: ``(B, N)`` routing logits.
        noise_scale: ``(B, N)`` standard deviations of the exploration noise (or ``None``).
        k: Active modules per sample, ``1 <= k <= N``.
        noisy: Add noise (training) or not.
        straight_through: Use the straight-through estimator described above.

    Returns:
        ``(gates, probs, mask)``, each ``(B, N)``.
    """
    n = logits.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"top-k must be in [1, {n}], got {k}")
    noisy_logits = logits
    if noisy and noise_scale is not None:
        noisy_logits = logits + torch.randn_like(logits) * noise_scale
    top_val, top_idx = noisy_logits.topk(k, dim=-1)
    mask = torch.zeros_like(logits).scatter(-1, top_idx, 1.0)
    soft = torch.zeros_like(logits).scatter(-1, top_idx, top_val.softmax(dim=-1) * k)
    # (soft - soft.detach()) is exactly 0 in the forward pass, so the gates equal the 0/1 mask
    # bit for bit; ``mask + soft - soft.detach()`` would round to values like 0.99999994.
    gates = mask + (soft - soft.detach()) if straight_through else soft
    return gates, logits.softmax(dim=-1), mask


def load_balance_loss(probs: list[Tensor], mask: list[Tensor]) -> Tensor:
    """Switch-style load-balancing loss averaged over layers.

    For each layer ``N * sum_i f_i * P_i`` where ``f_i`` is the share of active slots given to
    module i and ``P_i`` its mean router probability; equals 1 when the load is uniform.
    """
    losses = []
    for p, m in zip(probs, mask, strict=True):
        n = p.shape[-1]
        f = m.sum(0) / m.sum().clamp_min(1.0)
        losses.append(n * (f * p.mean(0)).sum())
    return torch.stack(losses).mean()
