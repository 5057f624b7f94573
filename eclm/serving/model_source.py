"""What a stage actor needs to rebuild the served model, and how it cuts out its blocks.

A served model travels as **architecture + weights**, never as a pickled module: the JSON
architecture (timm name and kwargs, modules per layer, input size, selector sizes) recreates a
weightless :func:`~eclm.modules.skeleton`, and the safetensors payload (with the sub-model spec in
its header, see :func:`~eclm.modules.pack_state`) fills in the weights. The same works for the
cloud model (full spec) and for any device's sub-model (its spec). A stage then keeps only its
contiguous range ``[start, stop)`` of the model's chain (stem, blocks..., head), whose
composition equals the model's forward.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:  # eclm.modules pulls in timm; import it only where a model is (re)built
    from eclm.modules import ModularModel, SubModelSpec

_ARCH_KEYS = ("arch", "modules_per_layer", "input_size", "selector_width", "selector_dim")


@dataclass(frozen=True)
class ModelSource:
    """A servable model: architecture description plus safetensors weights with the spec.

    Attributes:
        arch: ``{"name": timm name, "kwargs": {...}}`` as in :attr:`ModularModel.arch`.
        modules_per_layer: Modules per layer the modular model was built with.
        input_size: ``(C, H, W)`` of one request.
        payload: :func:`~eclm.modules.pack_state` bytes of the model's state with its spec.
        selector_width: Selector width of the modular model (part of its structure).
        selector_dim: Selector feature size of the modular model.
        name: Label for logs (``"cloud"``, a device name, ...).
        meta: Extra JSON-able facts for logs (version, parameter count, ...).
    """

    arch: dict[str, Any]
    modules_per_layer: int
    input_size: tuple[int, int, int]
    payload: bytes = field(repr=False)
    selector_width: int = 16
    selector_dim: int = 64
    name: str = "model"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.arch, Mapping) or "name" not in self.arch:
            raise ValueError(f"arch must be a mapping with a 'name', got {self.arch!r}")
        if len(self.input_size) != 3 or any(int(d) < 1 for d in self.input_size):
            raise ValueError(f"input_size must be (C, H, W) of positive ints, got {self.input_size!r}")
        if not isinstance(self.payload, (bytes, bytearray, memoryview)) or len(self.payload) == 0:
            raise ValueError("payload must be non-empty safetensors bytes (see eclm.modules.pack_state)")
        object.__setattr__(self, "input_size", tuple(int(d) for d in self.input_size))

    def architecture(self) -> dict[str, Any]:
        """The JSON-able architecture (everything but the weights), as stage actors receive it."""
        return {
            "arch": json.loads(json.dumps(self.arch)),
            "modules_per_layer": self.modules_per_layer,
            "input_size": list(self.input_size),
            "selector_width": self.selector_width,
            "selector_dim": self.selector_dim,
        }

    @classmethod
    def from_modular(cls, modular: ModularModel, spec: SubModelSpec | None = None, *, name: str = "model",
                     modules_per_layer: int | None = None, selector_width: int = 16,
                     selector_dim: int = 64) -> ModelSource:
        """Package the sub-model ``spec`` (default: the full model) of a modular model.

        Args:
            modular: The modular (cloud) model.
            spec: Which sub-model to serve; ``None`` for the full model.
            name: Label for logs.
            modules_per_layer: The ``modules_per_layer`` ``modular`` was built with; default: its
                largest layer size (right unless every layer got fewer modules than requested).
            selector_width: The selector width ``modular`` was built with.
            selector_dim: The selector feature size ``modular`` was built with.

        Returns:
            The source; its payload holds the extracted sub-model's state and the spec.
        """
        from eclm.modules import pack_state

        spec = spec or modular.full_spec()
        sub = modular.extract(spec)
        payload = pack_state(sub.state_dict(), spec, {"source": name})
        return cls(dict(modular.arch), modules_per_layer or max(modular.layer_sizes), tuple(modular.input_size), payload, selector_width, selector_dim, name,
                   {"params": sum(p.numel() for p in sub.parameters()), "modules": spec.num_modules()})


_SKELETONS_KEPT = 4
_skeletons: OrderedDict[tuple, ModularModel] = OrderedDict()
_skeletons_lock = threading.Lock()


def _skeleton_of(architecture: Mapping[str, Any]) -> ModularModel:
    """The weightless skeleton of ``architecture``, one of the last few kept.

    Building one costs ~0.2 s (timm model on the meta device plus layer discovery); a stage actor
    rebuilds its stage on every re-partition.
    """
    from eclm.modules import skeleton

    key = _frozen(architecture)
    with _skeletons_lock:
        skel = _skeletons.get(key)
        if skel is not None:
            _skeletons.move_to_end(key)
            return skel
    a = architecture
    skel = skeleton(copy.deepcopy(dict(a["arch"])), a["modules_per_layer"], tuple(a["input_size"]), a["selector_width"],
                    a["selector_dim"])
    with _skeletons_lock:
        _skeletons[key] = skel
        while len(_skeletons) > _SKELETONS_KEPT:
            _skeletons.popitem(last=False)
    return skel


def _frozen(value: Any) -> Any:
    """A hashable form of a JSON-like value: mappings by sorted keys, lists and tuples alike."""
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((str(k), _frozen(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("seq", tuple(_frozen(v) for v in value))
    return value


def build_model(architecture: Mapping[str, Any], payload: bytes) -> nn.Module:
    """Rebuild a model from architecture + weights: a plain timm ``nn.Module`` in eval mode.

    No pickled code is involved: the architecture is JSON and the weights are safetensors.

    Args:
        architecture: :meth:`ModelSource.architecture` (``arch``, ``modules_per_layer``,
            ``input_size``, ``selector_width``, ``selector_dim``).
        payload: :func:`~eclm.modules.pack_state` bytes with the sub-model spec in the header.

    Returns:
        The (sub-)model the payload describes, computing ``(N, C, H, W) -> (N, classes)`` logits.

    Raises:
        ValueError: If the architecture lacks a key, or the payload has no spec or does not match.
    """
    return _rebuild(architecture, payload)[1]


def build_chain(architecture: Mapping[str, Any], payload: bytes) -> list[tuple[str, nn.Module]]:
    """Rebuild the served model from architecture + weights and return its named chain.

    Args:
        architecture: :meth:`ModelSource.architecture`.
        payload: :func:`~eclm.modules.pack_state` bytes with the spec in the header.

    Returns:
        ``[(name, block), ...]`` (stem, blocks..., head) in eval mode; running them in order
        computes the model's forward.

    Raises:
        ValueError: If the architecture lacks a key, or the payload has no spec or does not match.
    """
    skel, sub = _rebuild(architecture, payload)
    return skel.chain(sub)


def _rebuild(architecture: Mapping[str, Any], payload: bytes) -> tuple[ModularModel, nn.Module]:
    from eclm.modules import rebuild_submodel, unpack_state

    missing = [k for k in _ARCH_KEYS if k not in architecture]
    if missing:
        raise ValueError(f"architecture lacks {missing}")
    state, spec, _ = unpack_state(bytes(payload))
    if spec is None:
        raise ValueError("payload carries no sub-model spec; pack it with pack_state(state, spec)")
    skel = _skeleton_of(architecture)
    return skel, rebuild_submodel(skel, spec, state).eval()


def chain_length(architecture: Mapping[str, Any], payload: bytes) -> int:
    """Number of blocks in the served model's chain."""
    return len(build_chain(architecture, payload))


def stage_module(chain: list[tuple[str, nn.Module]], start: int, stop: int) -> nn.Sequential:
    """The contiguous blocks ``[start, stop)`` of ``chain`` as one module (shared, not copied).

    Raises:
        ValueError: If the range is empty or outside the chain.
    """
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= len(chain)):
        raise ValueError(f"stage range [{start}, {stop}) must be non-empty within 0..{len(chain)}")
    return nn.Sequential(*(block for _, block in chain[start:stop]))
