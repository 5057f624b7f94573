"""Which modules to keep: a derived sub-model versus a width-prefix slice on a 2-class device.

A modular resnet18 is trained offline on the cloud's digits proxy share. A device holding two
classes scores the modules on its own training samples (selector importance), and the cloud
derives its sub-model within a parameter budget. The baseline is HeteroFL-style width slicing:
the first j groups of every layer, the same j everywhere. Both are evaluated on the device's
held-out samples of its two classes, straight after extraction (pure selection quality) and,
optionally, after an identical short fine-tune on the device's training samples.

Budget. The width-prefix family is coarse (j = 1..N), and the knapsack fills whatever budget it
gets, so the budget is set to the parameter count of the ``prefix_groups``-wide prefix (about
half the model for j = N/2): the prefix then uses the budget fully and the derived sub-model uses
at most as many parameters. Picking the prefix "not above the derived sub-model's size" instead
would hand the baseline a quarter-width model against a half-width one.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.modular.config import DIGITS_CLASSES, SelectionSettings
from benchmarks.modular.digits import DigitsSplit, load_digits_images, pair_subtasks, split_digits
from eclm.modules import (
    DeviceProfile,
    ModularModel,
    OfflineSettings,
    SubModelSpec,
    derive_submodel,
    modularize,
    train_offline,
)

VARIANTS = ("full model", "derived (ECLM)", "width prefix (HeteroFL)")


def width_prefix_spec(modular: ModularModel, groups: int, of: int) -> SubModelSpec:
    """The HeteroFL-style slice keeping the first ``groups / of`` of every layer's modules.

    Layers with fewer modules than ``of`` (e.g. attention with few heads) keep the same share,
    rounded, and at least one module.
    """
    keep = [max(1, min(n, round(groups * n / of))) for n in modular.layer_sizes]
    return SubModelSpec(model_id=modular.model_id, groups=[tuple(range(k)) for k in keep])


def largest_prefix_within(modular: ModularModel, max_params: float, of: int) -> SubModelSpec:
    """The widest width-prefix slice whose parameter count does not exceed ``max_params``.

    Raises:
        ValueError: If even the one-group prefix exceeds ``max_params``.
    """
    costs = modular.costs()
    for j in range(of, 0, -1):
        spec = width_prefix_spec(modular, j, of)
        if costs.total(spec)["params"] <= max_params * (1 + 1e-9):
            return spec
    raise ValueError(f"no width-prefix slice fits max_params={max_params:.0f}")


@torch.no_grad()
def device_accuracy(model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int]) -> tuple[float, float]:
    """Accuracy with the argmax over all logits, and restricted to the device's ``classes``."""
    model.eval()
    logits = model(x)
    cls = torch.as_tensor(list(classes))
    acc_all = (logits.argmax(-1) == y).float().mean().item()
    acc_dev = (cls[logits[:, cls].argmax(-1)] == y).float().mean().item()
    return acc_all, acc_dev


def finetune(model: nn.Module, x: Tensor, y: Tensor, s: SelectionSettings, seed: int) -> nn.Module:
    """A copy of ``model`` trained ``s.finetune_epochs`` epochs with SGD (BatchNorm in train mode).

    The batch order depends only on ``seed`` so every variant sees the same batches.
    """
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=s.finetune_lr, momentum=s.finetune_momentum)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(s.finetune_epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), s.finetune_batch_size):
            idx = perm[i : i + s.finetune_batch_size]
            if len(idx) < 2:
                continue  # BatchNorm cannot train on a single sample
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def run_seed(s: SelectionSettings, split: DigitsSplit, seed: int) -> dict:
    """Train offline, derive the device's sub-model and score every variant for one seed.

    Returns:
        A JSON-able record: timings, budget, specs and per-variant parameters and accuracies.
    """
    torch.manual_seed(seed)
    widths = {"channels": tuple(s.channels)} if s.channels else {}
    modular = modularize("resnet18", modules_per_layer=s.modules_per_layer, num_classes=DIGITS_CLASSES, **widths)
    t0 = time.perf_counter()
    history = train_offline(
        modular, split.proxy_x, split.proxy_y, split.val_x, split.val_y,
        OfflineSettings(epochs=s.epochs, enhance_epochs=s.enhance_epochs, batch_size=s.batch_size, lr=s.lr, seed=seed),
        subtasks=pair_subtasks(s.device_classes, DIGITS_CLASSES), num_classes=DIGITS_CLASSES, progress=False,
    )
    offline_s = time.perf_counter() - t0
    costs = modular.costs()
    budget = costs.total(width_prefix_spec(modular, s.prefix_groups, s.modules_per_layer))["params"]
    importance = modular.importance(split.device_train_x)
    t0 = time.perf_counter()
    derived = derive_submodel(modular, importance, DeviceProfile(name="digits-device", max_params=budget))
    solve_ms = 1e3 * (time.perf_counter() - t0)
    specs = dict(zip(VARIANTS, (modular.full_spec(), derived,
                                largest_prefix_within(modular, budget, s.modules_per_layer)), strict=True))
    full_params = costs.total(modular.full_spec())["params"]
    scores = {}
    for name, spec in specs.items():
        sub = modular.extract(spec).eval()
        params = sum(p.numel() for p in sub.parameters())
        acc_all, acc_dev = device_accuracy(sub, split.device_test_x, split.device_test_y, s.device_classes)
        record = {"params": params, "params_ratio": params / full_params, "modules": spec.num_modules(),
                  "groups": [list(g) for g in spec.groups], "acc_all": acc_all, "acc_device": acc_dev}
        if s.finetune_epochs:
            tuned = finetune(sub, split.device_train_x, split.device_train_y, s, seed)
            record["ft_acc_all"], record["ft_acc_device"] = device_accuracy(
                tuned, split.device_test_x, split.device_test_y, s.device_classes)
        scores[name] = record
    return {
        "seed": seed,
        "offline_seconds": offline_s,
        "proxy_val_acc": history[-1].val_acc_dense,
        "budget_params": budget,
        "solve_ms": solve_ms,
        "importance": importance,
        "device_train": len(split.device_train_y),
        "device_test": len(split.device_test_y),
        "variants": scores,
    }


def run_selection(s: SelectionSettings) -> dict:
    """Run :func:`run_seed` for seeds ``0 .. s.seeds - 1`` and aggregate.

    Returns:
        ``{"seeds": [per-seed records], "aggregate": {variant: {metric: {"mean", "std"}}}}``;
        ``std`` is the sample standard deviation over seeds (0 with one seed).
    """
    x, y = load_digits_images()
    runs = []
    for seed in range(s.seeds):
        split = split_digits(x, y, seed=seed, proxy_fraction=s.proxy_fraction,
                             proxy_val_fraction=s.proxy_val_fraction, device_classes=s.device_classes,
                             device_train_fraction=s.device_train_fraction,
                             max_device_samples=s.max_device_samples)
        runs.append(run_seed(s, split, seed))
    metrics = ["params", "params_ratio", "modules", "acc_all", "acc_device"]
    if s.finetune_epochs:
        metrics += ["ft_acc_all", "ft_acc_device"]
    aggregate = {
        name: {m: _mean_std([r["variants"][name][m] for r in runs]) for m in metrics} for name in VARIANTS
    }
    return {"seeds": runs, "aggregate": aggregate}


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
