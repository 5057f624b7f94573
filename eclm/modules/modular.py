"""The modular cloud model: a timm backbone whose blocks are module layers, plus the selector."""

from __future__ import annotations

import copy
import hashlib
import json
import weakref
from pathlib import Path

import numpy as np
import timm
import torch
from torch import Tensor, nn

from eclm.modules._surgery import install_gate_point, set_gate, set_submodule, strip_gate_points
from eclm.modules.costs import CostTable, measure
from eclm.modules.fast_ops import use_fast_ops
from eclm.modules.layer import ModuleLayer, layer_kind
from eclm.modules.module_copy import copy_module
from eclm.modules.registry import adapter_for
from eclm.modules.selector import ModuleSelector, Routing, noisy_top_k
from eclm.modules.spec import SubModelSpec
from eclm.modules.submodel_cache import SubModelCache


class ModularModel(nn.Module):
    """A timm model decomposed into module layers, with a unified module selector.

    With every module active and unit gates it computes exactly the source model's function.

    Args:
        backbone: A timm model of a registered family (weights are kept, not copied).
        modules_per_layer: Requested modules N per layer (attention layers may get fewer, one
            per head at most).
        input_size: ``(C, H, W)`` the model is used at; FLOPs and activations are measured there.
        arch: JSON-able description ``{"name": ..., "kwargs": {...}}`` that recreates the bare
            backbone with :func:`timm.create_model`; devices use it to rebuild sub-models.
        selector_width: Width of the selector's embedding CNN.
        selector_dim: Size of the selector's routing feature.
    """

    def __init__(
        self,
        backbone: nn.Module,
        modules_per_layer: int,
        input_size: tuple[int, int, int] = (3, 32, 32),
        arch: dict | None = None,
        selector_width: int = 16,
        selector_dim: int = 64,
    ) -> None:
        super().__init__()
        if modules_per_layer < 2:
            raise ValueError(f"modules_per_layer must be >= 2, got {modules_per_layer}")
        adapter = adapter_for(backbone)
        self.family = adapter.family
        self.backbone = backbone
        self.layers: list[ModuleLayer] = adapter.module_layers(backbone, modules_per_layer)
        if not self.layers:
            raise ValueError(f"{type(backbone).__name__} has no decomposable blocks")
        for layer in self.layers:
            install_gate_point(self._gate_module(backbone, layer), layer.gate_dim)
        self.input_size = tuple(input_size)
        self.arch = arch or {"name": type(backbone).__name__, "kwargs": {}}
        self.selector = ModuleSelector([l.n_modules for l in self.layers], input_size[0], selector_width, selector_dim)
        self.model_id = self._fingerprint()
        self._costs: CostTable | None = None

    # ----------------------------------------------------------------- structure
    @staticmethod
    def _gate_module(root: nn.Module, layer: ModuleLayer) -> nn.Module:
        return root.get_submodule(f"{layer.name}.{layer.gate_point}")

    def _fingerprint(self) -> str:
        desc = {
            "family": self.family,
            "arch": self.arch,
            "layers": [(l.name, l.kind, l.n_modules, len(l.gate_owner)) for l in self.layers],
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def layer_sizes(self) -> list[int]:
        return [l.n_modules for l in self.layers]

    def full_spec(self) -> SubModelSpec:
        """The spec selecting every module of every layer."""
        return SubModelSpec(model_id=self.model_id, groups=[tuple(range(l.n_modules)) for l in self.layers])

    def check_spec(self, spec: SubModelSpec) -> None:
        """Raise ``ValueError`` if ``spec`` does not fit this model."""
        if spec.model_id != self.model_id:
            raise ValueError(f"spec is for model {spec.model_id}, this model is {self.model_id}")
        if len(spec.groups) != len(self.layers):
            raise ValueError(f"spec has {len(spec.groups)} layers, model has {len(self.layers)}")
        for layer, groups in zip(self.layers, spec.groups, strict=True):
            if any(g >= layer.n_modules for g in groups):
                raise ValueError(f"layer {layer.name}: module index out of range 0..{layer.n_modules - 1}")
            if not groups and not layer.allows_empty:
                raise ValueError(f"layer {layer.name} has no shortcut and needs at least one module")

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor, gates: list[Tensor] | None = None) -> Tensor:
        """Run the backbone with per-layer module gates.

        Args:
            x: ``(B, C, H, W)`` input.
            gates: Per layer ``(B, N_l)`` gate values, or ``None`` for the dense model (all
                modules, unit gates: the original timm model's function).

        Returns:
            ``(B, num_classes)`` logits.
        """
        modules = [self._gate_module(self.backbone, l) for l in self.layers]
        try:
            if gates is not None:
                if len(gates) != len(self.layers):
                    raise ValueError(f"expected gates for {len(self.layers)} layers, got {len(gates)}")
                for layer, m, g in zip(self.layers, modules, gates, strict=True):
                    set_gate(m, g[:, layer.gate_owner.to(g.device)])
            return self.backbone(x)
        finally:
            for m in modules:
                set_gate(m, None)

    def route(self, x: Tensor, k: int | list[int], *, noisy: bool, straight_through: bool = True) -> Routing:
        """Gate every layer with the selector's noisy top-k (``k`` per layer or one for all)."""
        logits, noise = self.selector(x)
        ks = k if isinstance(k, list) else [min(k, n) for n in self.layer_sizes]
        out = [
            noisy_top_k(lg, ns, kk, noisy=noisy, straight_through=straight_through)
            for lg, ns, kk in zip(logits, noise, ks, strict=True)
        ]
        return Routing([o[0] for o in out], [o[1] for o in out], [o[2] for o in out])

    def spec_gates(self, spec: SubModelSpec, batch: int, device: torch.device | str = "cpu") -> list[Tensor]:
        """0/1 gates that make the modular model compute the sub-model ``spec``."""
        self.check_spec(spec)
        gates = []
        for layer, groups in zip(self.layers, spec.groups, strict=True):
            g = torch.zeros(batch, layer.n_modules, device=device)
            g[:, list(groups)] = 1.0
            gates.append(g)
        return gates

    @torch.no_grad()
    def importance(self, x: Tensor, batch_size: int = 256) -> list[list[float]]:
        """Mean selector probability of every module over ``x``: the device's L x N summary."""
        was = self.selector.training
        self.selector.eval()
        sums = [torch.zeros(n) for n in self.layer_sizes]
        for i in range(0, len(x), batch_size):
            for s, p in zip(sums, self.selector.probabilities(x[i : i + batch_size]), strict=True):
                s += p.sum(0).cpu()
        self.selector.train(was)
        return [(s / max(len(x), 1)).tolist() for s in sums]

    # ----------------------------------------------------------------- extraction
    def extract(self, spec: SubModelSpec, state: dict[str, Tensor] | None = None) -> nn.Module:
        """Materialise the sub-model ``spec`` as a plain compact timm ``nn.Module``.

        The result shares no storage with the cloud model. ``extract(full_spec())`` computes the
        source model's function; smaller specs are genuinely narrower blocks.

        Args:
            spec: The sub-model to materialise.
            state: A backbone ``state_dict`` to extract from instead of the current weights
                (e.g. an older cloud version).
        """
        self.check_spec(spec)
        model = copy_module(self.backbone)  # deepcopy's result, several times faster
        if state is not None:
            model.load_state_dict(state)
        model = strip_gate_points(model)
        return narrow(model, self.layers, [tuple(range(l.n_modules)) for l in self.layers], spec.groups,
                      reuse_blocks=True)  # ``model`` is this call's own copy

    def chain(self, model: nn.Module | None = None) -> list[tuple[str, nn.Module]]:
        """Named chain stages (stem, blocks..., head) of ``model`` (default: the backbone)."""
        return adapter_for(self.backbone).chain(model if model is not None else self.backbone)

    # ----------------------------------------------------------------- costs
    def costs(self) -> CostTable:
        """The measured cost table at ``input_size`` (computed once, then cached)."""
        if self._costs is None:
            self._costs = self._measure_costs()
        return self._costs

    def _measure_costs(self) -> CostTable:
        plain = strip_gate_points(copy.deepcopy(self.backbone)).eval()
        inputs: dict[str, Tensor] = {}
        hooks = [
            plain.get_submodule(l.name).register_forward_pre_hook(
                lambda _m, args, name=l.name: inputs.__setitem__(name, args[0].detach())
            )
            for l in self.layers
        ]
        example = torch.zeros(1, *self.input_size)
        with torch.no_grad():
            plain(example)
        for h in hooks:
            h.remove()
        total = measure(plain, example)
        base = total.copy()
        empty, shared, modules = [], [], []
        for layer in self.layers:
            block = plain.get_submodule(layer.name)
            kind = layer_kind(layer.kind)
            all_groups = list(range(layer.n_modules))
            x = inputs[layer.name]
            full = measure(block, x)
            singles = np.stack([measure(kind.slice(block, layer, all_groups, [i]), x) for i in all_groups])
            # full = s + sum f_i and single_i = s + f_i  =>  s = (sum single_i - full) / (N - 1)
            s = (singles.sum(axis=0) - full) / (layer.n_modules - 1)
            shared.append(s)
            modules.append(singles - s)
            empty.append(measure(kind.residual(block), x) if layer.allows_empty else np.full(4, np.nan))
            base -= full
        return CostTable(base=base, empty=empty, shared=shared, modules=modules)


def narrow(
    model: nn.Module,
    layers: list[ModuleLayer],
    held: tuple[tuple[int, ...], ...] | list,
    keep: tuple[tuple[int, ...], ...] | list,
    *,
    reuse_blocks: bool = False,
) -> nn.Module:
    """Narrow every module layer of ``model`` (in place) from ``held`` groups to ``keep`` groups.

    Works on the cloud backbone (``held`` = all groups) and on a device's sub-model (``held`` =
    its spec), which is how a device shrinks locally without the cloud.

    Args:
        model: The model; its narrowed blocks are replaced.
        layers: The module layers.
        held: Groups each layer of ``model`` holds now.
        keep: Groups each layer keeps.
        reuse_blocks: Slice ``model``'s own block objects instead of copies of them (when nothing
            else refers to them, e.g. ``model`` is a fresh copy; about 2x faster extraction).
    """
    for layer, h, k in zip(layers, held, keep, strict=True):
        if tuple(h) == tuple(k):
            continue
        block = model.get_submodule(layer.name)
        set_submodule(model, layer.name, layer_kind(layer.kind).slice(block, layer, list(h), list(k),
                                                                      in_place=reuse_blocks))
    return model


def create_backbone(name: str, *, weights_path: str | Path | None = None, **timm_kwargs) -> nn.Module:
    """Create a timm model by name with random init, optionally loading local weights.

    Never downloads: ``pretrained`` is always off; pretrained weights come from ``weights_path``
    (``.safetensors``, or a ``.pt``/``.pth`` state dict loaded with ``weights_only=True``).

    Raises:
        FileNotFoundError: If ``weights_path`` does not exist.
        ValueError: If the weights do not match the model.
    """
    if timm_kwargs.pop("pretrained", False):
        raise ValueError("pretrained=True would download weights; pass weights_path to a local file instead")
    model = use_fast_ops(timm.create_model(name, pretrained=False, **timm_kwargs))
    if weights_path is not None:
        load_local_weights(model, weights_path)
    return model


def read_local_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """``(backbone state, selector state or None)`` of a local weights file, without executing code.

    Accepts a plain state dict (``.safetensors``, or ``.pt``/``.pth`` loaded with ``weights_only=True``)
    and an eclm cloud checkpoint (``backbone.*`` and ``selector.*`` tensors, as the campaign store
    writes them under ``campaigns/<name>/<run>/cloud/``).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    if state and all(k.startswith(("backbone.", "selector.")) for k in state):
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        selector = {k[len("selector."):]: v for k, v in state.items() if k.startswith("selector.")}
        return backbone, selector or None
    return state, None


def load_local_weights(model: nn.Module, path: str | Path) -> dict[str, Tensor] | None:
    """Load a local state dict (or an eclm checkpoint's backbone) into ``model``.

    Returns:
        The checkpoint's selector state, if the file is an eclm checkpoint that has one.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the weights do not match the model.
    """
    state, selector = read_local_weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"weights in {path} do not match {type(model).__name__}: {err}") from err
    return selector


def load_checkpoint(path: str | Path, arch: dict, modules_per_layer: int,
                    input_size: tuple[int, int, int] = (3, 32, 32), selector_width: int = 16,
                    selector_dim: int = 64) -> ModularModel:
    """A cloud model from a checkpoint of the campaign store (backbone and selector).

    Args:
        path: ``campaigns/<name>/<run>/cloud/v<version>.safetensors``.
        arch: ``{"name": timm name, "kwargs": {...}}`` as the campaign built it (``CloudInfo.arch``).
        modules_per_layer: The campaign's ``backbone.modules_per_layer``.
        input_size: ``(C, H, W)``.
        selector_width: The campaign's ``backbone.selector_width``.
        selector_dim: The campaign's ``backbone.selector_dim``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the weights do not fit the architecture.
    """
    kwargs = dict(arch.get("kwargs", {}))
    model = modularize(arch["name"], modules_per_layer=modules_per_layer, input_size=input_size,
                       weights_path=path, selector_width=selector_width, selector_dim=selector_dim, **kwargs)
    return model.eval()


def modularize(
    model_or_name: nn.Module | str,
    *,
    modules_per_layer: int,
    input_size: tuple[int, int, int] = (3, 32, 32),
    weights_path: str | Path | None = None,
    selector_width: int = 16,
    selector_dim: int = 64,
    **timm_kwargs,
) -> ModularModel:
    """Build a :class:`ModularModel` from a timm model instance (keeping its weights) or name.

    Args:
        model_or_name: A timm model, or a timm model name created with ``timm_kwargs``.
        modules_per_layer: Modules N per module layer (>= 2).
        input_size: ``(C, H, W)`` used for cost measurement and the selector's input channels.
        weights_path: Optional local weights for a model created by name.
        selector_width: Selector embedding width.
        selector_dim: Selector routing feature size.
        **timm_kwargs: Passed to :func:`timm.create_model` (e.g. ``num_classes``, ``img_size``).

    Returns:
        The modular model, exactly equal to the source model when all modules are active.
    """
    selector = None
    if isinstance(model_or_name, str):
        timm_kwargs.setdefault("in_chans", input_size[0])
        backbone = create_backbone(model_or_name, **timm_kwargs)
        if weights_path is not None:
            selector = load_local_weights(backbone, weights_path)
        arch = {"name": model_or_name, "kwargs": _jsonable(timm_kwargs)}
    else:
        if timm_kwargs or weights_path:
            raise ValueError("timm kwargs / weights_path only apply when building from a model name")
        backbone = model_or_name
        name = getattr(backbone, "pretrained_cfg", {}).get("architecture") or type(backbone).__name__
        arch = {"name": name, "kwargs": {}}
    model = ModularModel(backbone, modules_per_layer, input_size, arch, selector_width, selector_dim)
    if selector is not None:  # an eclm checkpoint carries the trained selector too
        try:
            model.selector.load_state_dict(selector, strict=True)
        except RuntimeError as err:
            raise ValueError(f"selector weights in {weights_path} do not match the selector: {err}") from err
    return model


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def skeleton(arch: dict, modules_per_layer: int, input_size: tuple[int, int, int] = (3, 32, 32),
             selector_width: int = 16, selector_dim: int = 64) -> ModularModel:
    """A weightless (``meta`` device) modular model with the architecture ``arch``.

    Devices use it to recreate layer metadata and sub-model structure from the JSON ``arch``
    without allocating the full cloud model; weights then arrive as safetensors.
    """
    with torch.device("meta"):
        backbone = create_backbone(arch["name"], **arch.get("kwargs", {}))
    return ModularModel(backbone, modules_per_layer, input_size, arch, selector_width, selector_dim)


#: Narrowed weightless sub-models per skeleton, by spec (:func:`rebuild_submodel`).
_STRUCTURES: weakref.WeakKeyDictionary[ModularModel, SubModelCache] = weakref.WeakKeyDictionary()
_STRUCTURES_PER_SKELETON = 16


def submodel_structure(skel: ModularModel, spec: SubModelSpec) -> nn.Module:
    """The weightless sub-model ``spec`` of a :func:`skeleton` (shared: do not modify; copy it).

    Extracted once per skeleton and spec (the ``_STRUCTURES_PER_SKELETON`` most recently used are kept):
    devices of one pool share a skeleton and often a spec, and narrowing is half the cost of
    materialising a sub-model. ``skel`` with weights (not a skeleton): extracted every time.
    """
    if not all(t.is_meta for t in skel.backbone.parameters()):
        return skel.extract(spec)  # a model with weights: kept structures would hold copies of them
    kept = _STRUCTURES.get(skel)
    if kept is None:  # meta tensors hold no memory, so only the count bounds what is kept
        kept = _STRUCTURES[skel] = SubModelCache(skel, size=_STRUCTURES_PER_SKELETON, max_bytes=2**62)
    return kept.module(spec)


def rebuild_submodel(skel: ModularModel, spec: SubModelSpec, state: dict[str, Tensor]) -> nn.Module:
    """Materialise sub-model ``spec`` of a :func:`skeleton` and load ``state`` into it (strict).

    The result is a new module tree holding ``state``'s tensors (a copy of the spec's structure
    whose every tensor is assigned from ``state``); nothing of it is shared with other sub-models.
    """
    sub = copy_module(submodel_structure(skel, spec), tensors="share")
    try:
        sub.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"weights do not match sub-model: {err}") from err
    leftover = [n for n, t in list(sub.named_parameters()) + list(sub.named_buffers()) if t.is_meta]
    if leftover:
        raise ValueError(f"sub-model tensors missing from the payload: {leftover[:5]}")
    return sub
