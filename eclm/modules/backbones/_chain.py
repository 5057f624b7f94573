"""Stages for running a timm model as a chain of contiguous pieces (stem, blocks..., head)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


class ChainStage(nn.Module):
    """A piece of a timm model that shares the model's submodules and parameter names.

    The stage registers the model's children/parameters named in ``keep`` under the same names,
    copies the model's plain attributes (flags such as ``num_prefix_tokens``), and runs ``fn``
    (a module-level function, so stages pickle by reference). Because names are preserved, a
    stage's ``state_dict`` keys are the model's keys.

    Args:
        model: The timm model.
        keep: Names of direct children / parameters / buffers the stage needs.
        fn: ``fn(stage, x) -> y`` using those names (may call methods of ``type(model)`` with the
            stage as ``self``).
    """

    def __init__(self, model: nn.Module, keep: list[str], fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        for key, value in vars(model).items():
            if not key.startswith("_") and key != "training" and not isinstance(value, nn.Module):
                object.__setattr__(self, key, value)
        for key in keep:
            if key in model._modules:
                self.add_module(key, model._modules[key])
            elif key in model._parameters:
                self.register_parameter(key, model._parameters[key])
            elif key in model._buffers:
                self.register_buffer(key, model._buffers[key])
            else:
                object.__setattr__(self, key, getattr(model, key, None))
        self.fn = fn
        self.model_type = type(model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self, x)


def named_children_chain(parent_name: str, parent: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(f"{parent_name}.{i}", child), ...]`` for a Sequential of blocks."""
    return [(f"{parent_name}.{name}", child) for name, child in parent.named_children()]
