"""The cloud's own reference update: what a short honest fine-tune of a sub-model looks like.

FLTrust (Cao et al., "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping",
NDSS 2021) lets the server train on a small clean root dataset and trusts a client update in
proportion to its cosine with that server update. eclm's cloud has such data (the proxy training
set), and devices hold different sub-models and classes, so the reference is computed per device:
the same sub-model, the proxy samples of the device's classes, the device's optimiser settings,
a few steps. The robust screen compares the device's change with it (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from eclm.modules.deltas import state_delta
from eclm.modules.module_copy import copy_module
from eclm.pipelines.adaptation import finetune


def reference_update(
    submodel: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    momentum: float = 0.9,
    local_classes: Sequence[int] | None = None,
    seed: int = 0,
    in_place: bool = False,
    max_grad_norm: float | None = None,
) -> dict[str, Tensor]:
    """Fine-tune a copy of ``submodel`` for ``steps`` batches and return its change.

    Args:
        submodel: The sub-model as the cloud holds it (not modified unless ``in_place``).
        x: Proxy images ``(N, C, H, W)`` (typically the samples of the device's classes).
        y: Their labels ``(N,)``.
        steps: Batches of ``batch_size`` to train on (fewer if ``x`` is smaller).
        lr: SGD learning rate (the devices' ``adaptation.lr``).
        batch_size: Batch size (the devices' ``adaptation.batch_size``).
        momentum: SGD momentum.
        local_classes: Restrict the softmax to these classes, as a device does with
            ``adaptation.restrict_to_local_classes``.
        seed: Seed of the sample draw and batch order.
        in_place: Fine-tune ``submodel`` itself (a throwaway copy the caller made, e.g. a freshly
            extracted sub-model) instead of a copy of it.
        max_grad_norm: Clip each step's gradient to this norm, as devices do with
            ``adaptation.max_grad_norm`` (``None``: no clipping).

    Returns:
        ``{name: after - before}`` for the learned floating-point tensors (the keys and shapes of
        ``submodel.state_dict()``, without norm statistics). Empty if ``x`` holds fewer than two
        samples (nothing can be trained).

    Raises:
        ValueError: If ``steps`` or ``batch_size`` is not positive or ``x`` and ``y`` differ in length.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if len(x) < 2:
        return {}
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(x), generator=gen)[: steps * batch_size]
    model = submodel if in_place else copy_module(submodel)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finetune(model, x[pick], y[pick], epochs=1, lr=lr, batch_size=batch_size, momentum=momentum,
             generator=gen, local_classes=list(local_classes) if local_classes else None, max_grad_norm=max_grad_norm)
    return state_delta(model.state_dict(), before, statistics=False)
