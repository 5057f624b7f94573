"""Low-level model surgery shared by every backbone family.

Three mechanisms make a timm block *modular* without copying its forward code:

* **Gate points.** A forward hook on one submodule of the block (the point where the hidden
  channels exist, e.g. ``act1`` of a ResNet BasicBlock) multiplies its output by a per-channel
  gate. Hooks leave parameter names untouched, so the modular model's ``state_dict`` keys are the
  timm model's keys and weights exchanged with devices need no renaming.
* **Slicing.** A module layer lists the parameters/buffers that carry a hidden-channel axis
  (``dim``) and, for each index along that axis, which group (module) owns it. A sub-model keeps
  the indices owned by its selected groups; everything else in the block is shared.
* **Residual modules.** Selecting no group leaves only the block's shared part; those are small
  explicit modules below whose parameters keep the original names.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

_GATE_ATTR = "_eclm_gate"
_GATE_DIM_ATTR = "_eclm_gate_dim"


def _apply_gate(module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
    """Forward hook: scale the output's channel axis by the gate set on the module (if any)."""
    gate = getattr(module, _GATE_ATTR, None)
    if gate is None:
        return output
    dim = getattr(module, _GATE_DIM_ATTR) % output.ndim
    shape = [1] * output.ndim
    shape[0] = gate.shape[0]
    shape[dim] = gate.shape[1]
    return output * gate.reshape(shape).to(output.dtype)


def install_gate_point(module: nn.Module, channel_dim: int) -> None:
    """Attach the gating hook to ``module`` (idempotent)."""
    if not hasattr(module, _GATE_DIM_ATTR):
        module.register_forward_hook(_apply_gate)
    setattr(module, _GATE_DIM_ATTR, channel_dim)
    setattr(module, _GATE_ATTR, None)


def set_gate(module: nn.Module, gate: Tensor | None) -> None:
    """Set the per-channel gate ``(B, C)`` used by the next forward (``None`` = identity)."""
    setattr(module, _GATE_ATTR, gate)


def strip_gate_points(model: nn.Module) -> nn.Module:
    """Remove every gating hook and attribute (used on extracted copies)."""
    for m in model.modules():
        if hasattr(m, _GATE_DIM_ATTR):
            for key, hook in list(m._forward_hooks.items()):
                if hook is _apply_gate:
                    del m._forward_hooks[key]
            delattr(m, _GATE_DIM_ATTR)
            if hasattr(m, _GATE_ATTR):
                delattr(m, _GATE_ATTR)
    return model


def get_submodule_or_none(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` (``""`` is not allowed)."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def group_owner(width: int, n_groups: int) -> Tensor:
    """Owner group of each of ``width`` channels split into ``n_groups`` contiguous groups.

    Groups differ in size by at most one channel (``numpy.array_split`` convention).
    """
    if not 1 <= n_groups <= width:
        raise ValueError(f"cannot split {width} channels into {n_groups} groups")
    base, extra = divmod(width, n_groups)
    sizes = [base + (1 if g < extra else 0) for g in range(n_groups)]
    return torch.repeat_interleave(torch.arange(n_groups), torch.tensor(sizes))


def positions(owner: Tensor, groups: Iterable[int]) -> Tensor:
    """Indices (ascending) of ``owner`` entries that belong to ``groups``."""
    keep = torch.isin(owner, torch.as_tensor(sorted(set(groups)), dtype=owner.dtype))
    return torch.nonzero(keep, as_tuple=False).flatten()


def slice_tensor_(module: nn.Module, key: str, dim: int, index: Tensor) -> None:
    """Replace parameter/buffer ``key`` of ``module`` with its ``index_select`` along ``dim``."""
    owner_path, _, name = key.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    old = getattr(owner, name)
    new = old.detach().index_select(dim, index.to(old.device)).clone()
    if isinstance(old, nn.Parameter):
        setattr(owner, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        owner.register_buffer(name, new)


def refresh_shape_attributes(block: nn.Module) -> None:
    """Make conv/linear/norm attributes agree with their (sliced) weight shapes.

    The forward passes read ``groups`` (depthwise convs) and the norms read nothing else, but
    the attributes are part of the module's public description and ``repr``; keeping them
    consistent keeps extracted sub-models honest ``nn.Module``s.
    """
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            out_ch = m.weight.shape[0]
            if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise
                m.groups = out_ch
                m.in_channels = out_ch
            else:
                m.in_channels = m.weight.shape[1] * m.groups
            m.out_channels = out_ch
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None:
            m.num_features = m.weight.shape[0]


class BiasOnly(nn.Module):
    """What a linear/1x1 projection with no input channels left computes: its bias.

    Args:
        bias: The projection's bias ``(C_out,)`` or ``None`` (then the output is zero).
        channel_dim: Axis of the output that holds ``C_out`` (``-1`` channels-last, ``1`` NCHW).
    """

    def __init__(self, bias: Tensor | None, out_features: int, channel_dim: int) -> None:
        super().__init__()
        self.out_features = out_features
        self.channel_dim = channel_dim
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        shape = list(x.shape)
        dim = self.channel_dim % x.ndim
        shape[dim] = self.out_features
        out = x.new_zeros(shape)
        if self.bias is not None:
            view = [1] * x.ndim
            view[dim] = self.out_features
            out = out + self.bias.reshape(view)
        return out


class ProjectionResidual(nn.Module):
    """Residual module of a ``proj``/``fc2``-ending sublayer: the output projection's bias alone.

    The attribute is named like the original projection so ``state_dict`` keys match the cloud's
    (``...attn.proj.bias`` / ``...mlp.fc2.bias``).
    """

    def __init__(self, proj_name: str, proj: nn.Module, channel_dim: int) -> None:
        super().__init__()
        out_features = proj.weight.shape[0]
        bias = getattr(proj, "bias", None)
        if bias is not None:
            bias = bias.reshape(-1)
        self.proj_name = proj_name
        self.add_module(proj_name, BiasOnly(bias, out_features, channel_dim))

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return getattr(self, self.proj_name)(x)


def eval_norm_constant(norm: nn.Module, like: Tensor) -> Tensor:
    """``norm(0)`` using running statistics: the constant a BatchNorm adds when its input is zero.

    Residual modules always use the running statistics so they never write zeros into them.
    """
    zeros = like.new_zeros(like.shape)
    if isinstance(norm, nn.modules.batchnorm._NormBase):
        out = torch.nn.functional.batch_norm(
            zeros, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
        )
        act = getattr(norm, "act", None)  # timm BatchNormAct2d
        return act(out) if act is not None else out
    return norm(zeros)
