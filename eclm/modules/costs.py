"""Per-module and shared-part cost table: parameters, FLOPs, activation bytes, payload bytes.

Costs are *measured*, not estimated: each module layer's block is extracted for the empty set,
for each single group and for all groups, and run once at the layer's real input shape under
``torch.utils.flop_counter``. A layer's cost for a non-empty group set S is
``shared + sum_{i in S} module_i``; for the empty set it is the residual module's cost. The rest
of the model (stem, head, undecomposed blocks) is the ``base``. Parameters, payload bytes and
FLOPs are exactly additive; activation bytes (sum of leaf-module outputs per sample) are too
for the supported blocks, up to attention's internal score matrix which is not a module output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from eclm.modules.spec import RESOURCE_DIMS, SubModelSpec


@dataclass
class CostTable:
    """Costs of every part of a modular model, one column per resource dimension.

    Attributes:
        base: ``(4,)`` cost of everything outside module layers.
        empty: Per layer ``(4,)`` cost of the residual module (``nan`` where not allowed).
        shared: Per layer ``(4,)`` cost shared by the layer's modules when any is selected.
        modules: Per layer ``(N_l, 4)`` cost of each module.
        dims: Names of the four columns.
    """

    base: np.ndarray
    empty: list[np.ndarray]
    shared: list[np.ndarray]
    modules: list[np.ndarray]
    dims: tuple[str, ...] = RESOURCE_DIMS

    def layer_cost(self, layer: int, groups: tuple[int, ...] | list[int]) -> np.ndarray:
        if not groups:
            return self.empty[layer]
        return self.shared[layer] + self.modules[layer][list(groups)].sum(axis=0)

    def total(self, spec: SubModelSpec) -> dict[str, float]:
        """Cost of the sub-model ``spec`` per dimension."""
        vec = self.base + sum(self.layer_cost(i, g) for i, g in enumerate(spec.groups))
        return dict(zip(self.dims, (float(v) for v in vec), strict=True))

    def to_dict(self) -> dict:
        return {
            "dims": list(self.dims),
            "base": self.base.tolist(),
            "empty": [e.tolist() for e in self.empty],
            "shared": [s.tolist() for s in self.shared],
            "modules": [m.tolist() for m in self.modules],
        }

    @classmethod
    def from_dict(cls, d: dict) -> CostTable:
        return cls(
            base=np.asarray(d["base"], dtype=float),
            empty=[np.asarray(e, dtype=float) for e in d["empty"]],
            shared=[np.asarray(s, dtype=float) for s in d["shared"]],
            modules=[np.asarray(m, dtype=float) for m in d["modules"]],
            dims=tuple(d["dims"]),
        )


def measure(module: nn.Module, example: Tensor) -> np.ndarray:
    """Measured ``[params, flops, activation_bytes, payload_bytes]`` of ``module`` on ``example``.

    ``example`` must have batch size 1; FLOPs and activation bytes are per sample.
    """
    params = sum(p.numel() for p in module.parameters())
    payload = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    act_bytes = 0

    def count(_m: nn.Module, _i: tuple, out: object) -> None:
        nonlocal act_bytes
        if isinstance(out, Tensor):
            act_bytes += out.numel() * out.element_size()

    hooks = [m.register_forward_hook(count) for m in module.modules() if not list(m.children())]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            module(example)
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    return np.array([params, fc.get_total_flops(), act_bytes, payload], dtype=float)
