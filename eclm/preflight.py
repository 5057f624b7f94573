"""Pre-flight checks: what can be known about a campaign before Ray starts.

Loading (:class:`~eclm.config.PlatformConfig`) rejects wrong keys and values. These checks reject
configs that are well-formed but cannot run, naming the field and the fix, in seconds instead of
a failed actor minutes later: the backbone exists in timm and in eclm's backbone registry, data
and weight files exist and the data splits as configured, every device's budget holds at least
the smallest sub-model, trigger device names exist, and devices pinned to a node have a cluster
to run on. Each check runs the code the platform runs later (timm, the backbone registry, the
data sources and split, the cost table of the modular model, the resource-to-budget model of
:mod:`eclm.pipelines.profiler` and the sub-model derivation), so it cannot disagree with the cloud.
Ray-free; ``eclm check-config``, ``eclm run``, ``eclm demo`` and ``eclm serve`` run it first.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from eclm.config import ConfigError, DeviceConfig, PlatformConfig
from eclm.resources import NODE_LABEL

_BUDGET_RESOURCES = ("memory_mb", "gflops", "bandwidth_mbps", "params_fraction")


@dataclass
class PreflightReport:
    """What the checks found out about a config that passed them.

    Attributes:
        num_classes: Classes of the data source.
        full_params: Parameters of the cloud model.
        layers: Module layers of the cloud model.
        submodels: Per locally adapting device, the parameters of the largest sub-model its
            configured budget allows (``None``: unconstrained, the full model).
        notes: Things worth knowing that do not stop a run (measured resources, split devices, ...).
    """

    num_classes: int
    full_params: float
    layers: int
    submodels: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def preflight(cfg: PlatformConfig, *, source: str = "config", address: str | None = None) -> PreflightReport:
    """Check that the campaign ``cfg`` can run, before anything is started.

    Args:
        cfg: The loaded config (relative paths are taken relative to the current directory).
        source: Where the config came from, used in messages (the file name).
        address: The Ray address the campaign will use (``None``: a new local Ray).

    Returns:
        A :class:`PreflightReport` for a config that passed.

    Raises:
        ConfigError: Listing every problem found, one line each, starting with the field.
    """
    cfg = cfg.resolve_paths()
    problems: list[str] = []
    notes: list[str] = []
    if cfg.backbone.weights_path is not None and not cfg.backbone.weights_path.is_file():
        problems.append(f"backbone.weights_path: file not found: {cfg.backbone.weights_path}")
    num_classes = _num_classes(cfg, problems)
    model = _cloud_model(cfg, num_classes, problems) if num_classes is not None else None
    submodels = _check_budgets(cfg, model, problems, notes) if model is not None else {}
    problems += _unknown_trigger_devices(cfg)
    problems += _pinned_without_cluster(cfg, address)
    notes += _silent_gateways(cfg)
    if "runtime_resources" in cfg.workdir.parts:
        notes.append(f"workdir {cfg.workdir} lies in the Ray job's temporary working_dir and is deleted with it: "
                     "name a lasting location (absolute or ~/...) for checkpoints and runs (docs/cluster.md)")
    if problems:
        raise ConfigError(f"{source}: the campaign cannot run:\n  " + "\n  ".join(problems))
    assert model is not None and num_classes is not None
    full = model.costs().total(model.full_spec())
    return PreflightReport(num_classes, full["params"], len(model.layers), submodels, notes)


def cloud_model(cfg: PlatformConfig, num_classes: int, *, load_weights: bool = True):
    """The modular cloud model of ``cfg``, built as the cloud builds it (random init unless weights).

    Args:
        cfg: The platform config (backbone section and input size).
        num_classes: Classes of the data source.
        load_weights: Load ``backbone.weights_path`` when set.

    Returns:
        The :class:`~eclm.modules.ModularModel`.
    """
    from eclm.modules import modularize

    b = cfg.backbone
    return modularize(b.name, modules_per_layer=b.modules_per_layer, input_size=cfg.input_size,
                      weights_path=b.weights_path if load_weights else None, selector_width=b.selector_width,
                      selector_dim=b.selector_dim, num_classes=num_classes, **b.kwargs)


def _num_classes(cfg: PlatformConfig, problems: list[str]) -> int | None:
    """Classes of the data: known for the embedded digits and torchvision sets (whose files are not
    read here, only a torchvision root's existence checked); other sources are loaded and split as
    the cloud does, which also checks their keys, shapes and class counts."""
    from eclm.data import build_source, build_split

    data = cfg.data
    if data.source == "torchvision" and not data.root.is_dir():  # type: ignore[union-attr]  # required field
        problems.append(f"data.root: torchvision dataset directory not found: {data.root}")
        return None
    if data.known_num_classes() is not None:
        return data.known_num_classes()
    where = {"npz": "data.path", "image_folder": "data.root"}.get(data.source, "data")
    try:
        loaded = build_source(data).load()
        build_split(loaded, data)
    except FileNotFoundError as err:
        problems.append(f"{where}: {err}")
        return None
    except ValueError as err:
        problems.append(f"{where}: {err}")
        return None
    return loaded.num_classes


def _cloud_model(cfg: PlatformConfig, num_classes: int, problems: list[str]):
    """The cloud model without weights, or ``None`` with the reason appended to ``problems``."""
    import timm

    from eclm.modules.registry import supported_families

    name = cfg.backbone.name
    if not timm.is_model(name):
        family = re.match(r"[A-Za-z]*", name).group(0)  # type: ignore[union-attr]  # always matches
        similar = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.75)
        similar += [n for n in timm.list_models(f"{family}*") if n not in similar][: 6 - len(similar)] if family else []
        hint = f"; similar names: {', '.join(similar)}" if similar else ""
        problems.append(f"backbone.name: {name!r} is not a timm model{hint} (eclm decomposes the timm families "
                        f"{', '.join(supported_families())}; timm.list_models('<family>*') lists their names)")
        return None
    try:
        return cloud_model(cfg, num_classes, load_weights=False)
    except TypeError as err:  # timm.create_model rejected a keyword
        problems.append(f"backbone.kwargs: {err}")
    except (ValueError, RuntimeError) as err:  # unsupported family, no decomposable blocks, bad sizes
        problems.append(f"backbone: {err}")
    return None


def _check_budgets(cfg: PlatformConfig, model, problems: list[str], notes: list[str]) -> dict[str, float | None]:
    """Derive each locally adapting device's sub-model from its configured resources."""
    from eclm.modules import BudgetTooSmallError, derive_submodel

    costs = model.costs()
    uniform = [[1.0 / n] * n for n in model.layer_sizes]  # feasibility does not depend on importance
    submodels: dict[str, float | None] = {}
    for i, device in enumerate(cfg.devices):
        if device.mode != "local":
            notes.append(f"{device.name}: mode {device.mode}; its split budget is planned at run time")
            continue
        resources = _configured(device)
        if device.measure and len(resources) < len(_BUDGET_RESOURCES):
            notes.append(f"{device.name}: unset resources are measured on its node when the campaign starts")
        if not resources:
            submodels[device.name] = None
            continue
        try:
            spec = derive_submodel(model, uniform, _budget(cfg, device.name, resources, model))
        except BudgetTooSmallError as err:
            reason = str(err).removeprefix(f"device {device.name!r}: ")
            problems.append(f"devices[{i}] ({device.name}): no sub-model of {cfg.backbone.name} fits its budget: "
                            f"{reason}{_raise_hint(cfg, device.name, resources, model)}")
            continue
        submodels[device.name] = costs.total(spec)["params"]
    return submodels


def _configured(device: DeviceConfig) -> dict[str, float]:
    return {k: getattr(device, k) for k in _BUDGET_RESOURCES if getattr(device, k) is not None}


def _budget(cfg: PlatformConfig, name: str, resources: dict[str, float], model):
    from eclm.pipelines.profiler import budget_from_resources

    a = cfg.adaptation
    return budget_from_resources(
        name, resources, full_params=model.costs().total(model.full_spec())["params"], batch_size=a.batch_size,
        target_step_seconds=a.target_step_seconds, max_transfer_seconds=a.max_transfer_seconds)


def _raise_hint(cfg: PlatformConfig, name: str, resources: dict[str, float], model) -> str:
    """``"; raise memory_mb to at least 14.9"``: each budget is proportional to its resource."""
    from eclm.modules import minimal_cost

    minimum = minimal_cost(model.costs(), [layer.allows_empty for layer in model.layers])
    raises = []
    for key, value in resources.items():
        limits = _budget(cfg, name, {key: value}, model).limits()
        factor = max((minimum[dim] / limit for dim, limit in limits.items()), default=0.0)
        if factor > 1:
            raises.append(f"{key} to at least {_ceil3(value * factor)} (now {value:g})")
    return f"; raise {' and '.join(raises)}" if raises else ""


def _ceil3(x: float) -> str:
    """``x`` rounded up to three significant digits (a lower bound stays a lower bound)."""
    scale = 10 ** (math.floor(math.log10(x)) - 2)
    return f"{math.ceil(x / scale - 1e-9) * scale:.4g}"


def _unknown_trigger_devices(cfg: PlatformConfig) -> list[str]:
    """Trigger leaves that watch devices the campaign does not have (they would never fire)."""
    names, problems, stack = {d.name for d in cfg.devices}, [], [("trigger", cfg.trigger)]
    while stack:
        where, node = stack.pop()
        if node is None:
            continue
        stack += [(f"{where}.children[{i}]", child) for i, child in enumerate(node.children)]
        watched: Any = node.params.get("devices") if not node.children else None
        unknown = sorted(set(watched or []) - names)
        if unknown:
            problems.append(f"{where}.params.devices: {unknown} are not devices of this campaign "
                            f"(devices: {sorted(names)})")
    return problems


def _silent_gateways(cfg: PlatformConfig, timeout_s: float = 2.0) -> list[str]:
    """Notes for devices behind a gateway that does not answer now (they may come online later;
    until then their calls fail and the campaign goes on without them)."""
    from eclm.gateway import RemoteDevice

    notes = []
    for i, device in enumerate(cfg.devices):
        if device.gateway is None:
            continue
        try:
            RemoteDevice(device.name, device.gateway, timeout_s=timeout_s).ping()
        except Exception as err:  # noqa: BLE001 - any failure: the device is not reachable now
            notes.append(f"devices[{i}] ({device.name}): its gateway {device.gateway} does not answer now ({err}); "
                         "its calls fail, and the campaign goes on without it, until it does")
    return notes


def _pinned_without_cluster(cfg: PlatformConfig, address: str | None) -> list[str]:
    if address is not None:
        return []
    return [f"devices[{i}].node: {d.node!r} pins {d.name} to the cluster node labelled {NODE_LABEL}={d.node}, "
            "but this campaign starts a local Ray without such a node: connect to the cluster "
            "(ray.address, --address or RAY_ADDRESS) or remove the node field"
            for i, d in enumerate(cfg.devices) if d.node]


def describe(report: PreflightReport, cfg: PlatformConfig) -> list[str]:
    """Lines summarising a passed check for people (``eclm check-config``)."""
    lines = [f"backbone {cfg.backbone.name}: {report.full_params:,.0f} params, {report.layers} module layers x "
             f"{cfg.backbone.modules_per_layer} modules; data {cfg.data.source}: {report.num_classes} classes"]
    for name, params in report.submodels.items():
        size = "the full model" if params is None else f"{params:,.0f} params ({params / report.full_params:.0%})"
        lines.append(f"device {name}: largest sub-model within its configured budget: {size}")
    return lines + [f"note: {n}" for n in report.notes]
