"""Offline stage on the cloud (ECLM, arXiv 2311.11083; docs/architecture.md): train modules + selector on proxy data.

Stage 1 trains modules and selector end to end with noisy top-k routing and
``CE + lambda * load-balance``. The number of active modules per layer is drawn afresh each step
(a fraction of N between ``min_active_fraction`` and 1): eclm's choice, so that sub-models of
any size a device may get have been trained, not only the top-k width.

Stage 2 ("module ability-enhancing") measures the per-layer sub-task x module load matrix H,
solves the assignment ILP (:mod:`eclm.modules.subtasks`) and fine-tunes with
``CE + lambda * KL(target || router)`` so each sub-task is served by few modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from eclm.modules.modular import ModularModel
from eclm.modules.offline_settings import OfflineSettings
from eclm.modules.selector import load_balance_loss
from eclm.modules.subtasks import assign_modules, class_subtasks, subtask_of_labels, target_routing


@dataclass
class EpochMetrics:
    """Metrics of one offline epoch."""

    stage: str
    epoch: int
    loss: float
    ce: float
    aux: float
    train_acc: float
    val_acc_dense: float
    val_acc_routed: float


def _batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield perm[i : i + batch_size]


@torch.no_grad()
def evaluate(model: ModularModel, x: Tensor, y: Tensor, *, routed_k: int | None = None, batch_size: int = 256) -> float:
    """Accuracy of the dense model, or of router top-``routed_k`` gating when given."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        gates = model.route(xb, routed_k, noisy=False).gates if routed_k else None
        correct += int((model(xb, gates).argmax(-1) == y[i : i + batch_size]).sum())
    model.train(was)
    return correct / max(len(x), 1)


def _ks(model: ModularModel, frac: float) -> list[int]:
    return [max(1, min(n, round(frac * n))) for n in model.layer_sizes]


def train_offline(
    model: ModularModel,
    x: Tensor,
    y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    settings: OfflineSettings | None = None,
    *,
    subtasks: Sequence[Sequence[int]] | None = None,
    num_classes: int | None = None,
    progress: bool = True,
) -> list[EpochMetrics]:
    """Run both offline stages in place on ``model``.

    Args:
        model: The modular model (from scratch or with local pretrained weights).
        x, y: Proxy training data ``(N, C, H, W)`` / ``(N,)``.
        val_x, val_y: Proxy validation data.
        settings: Offline settings (defaults when ``None``).
        subtasks: Class groups for stage 2; default contiguous groups of ``classes_per_subtask``.
        num_classes: Number of classes (default ``max(y) + 1``).
        progress: Show a progress bar.

    Returns:
        One :class:`EpochMetrics` per epoch of both stages.
    """
    run = OfflineTraining(model, x, y, val_x, val_y, settings, subtasks=subtasks, num_classes=num_classes,
                          progress=progress)
    while run.next_epoch() is not None:
        pass
    return run.history


class OfflineTraining:
    """The offline stage one epoch at a time (so a caller can report progress between epochs).

    Stage 1 (``modules``) runs ``settings.epochs`` epochs, then stage 2 (``enhance``) runs
    ``settings.enhance_epochs``; :meth:`next_epoch` returns each epoch's metrics and ``None``
    once both are done (the model is then in eval mode). Same arguments as :func:`train_offline`.

    Raises:
        ValueError: If the proxy data is empty or its lengths differ.
    """

    def __init__(self, model: ModularModel, x: Tensor, y: Tensor, val_x: Tensor, val_y: Tensor,
                 settings: OfflineSettings | None = None, *, subtasks: Sequence[Sequence[int]] | None = None,
                 num_classes: int | None = None, progress: bool = False) -> None:
        self.s = settings or OfflineSettings()
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"proxy data must be non-empty with matching lengths, got {len(x)} and {len(y)}")
        self.model, self.x, self.y = model, x, y
        self.subtasks, self.num_classes = subtasks, num_classes
        self.run = _OfflineRun(model, x, y, (val_x, val_y), self.s, progress)
        self.total = self.s.epochs + self.s.enhance_epochs
        self.done = 0
        self._targets: tuple | None = None

    @property
    def history(self) -> list[EpochMetrics]:
        return self.run.history

    def next_epoch(self) -> EpochMetrics | None:
        """Train the next epoch and return its metrics, or ``None`` when both stages are done."""
        s = self.s
        if self.done >= self.total:
            return None
        if self.done < s.epochs:
            self.run.epoch("modules", self.done, None, None)
        else:
            if self._targets is None:  # the load matrix is measured once stage 1 is over
                n_cls = self.num_classes or int(self.y.max()) + 1
                tasks = [list(t) for t in (self.subtasks or class_subtasks(n_cls, s.classes_per_subtask))]
                task_idx = torch.as_tensor(subtask_of_labels(self.y.numpy(), tasks))
                self._targets = (enhancement_targets(self.model, self.x, task_idx, len(tasks), s.kappa1, s.kappa2),
                                 task_idx)
            self.run.epoch("enhance", self.done - s.epochs, *self._targets)
        self.done += 1
        if self.done == self.total:
            self.run.bar.close()
            self.model.eval()
        return self.run.history[-1]


class _OfflineRun:
    """The state of one offline training run: optimiser, schedule, generator, history."""

    def __init__(self, model: ModularModel, x: Tensor, y: Tensor, val: tuple[Tensor, Tensor], s: OfflineSettings,
                 progress: bool) -> None:
        self.model, self.x, self.y, self.val, self.s = model, x, y, val, s
        self.gen = torch.Generator().manual_seed(s.seed)
        torch.manual_seed(s.seed)
        self.opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        total = s.epochs + s.enhance_epochs
        steps = max(1, total * math.ceil(len(x) / s.batch_size))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=steps)
        self.half = [max(1, n // 2) for n in model.layer_sizes]
        self.history: list[EpochMetrics] = []
        self.bar = tqdm(total=total, desc="offline", disable=not progress, leave=False)

    def _routing_loss(self, xb: Tensor, idx: Tensor, targets: list[Tensor] | None, task_idx: Tensor | None):
        """``(routing, auxiliary loss, its weight)``: load balance in stage 1, KL to targets in stage 2."""
        model, s = self.model, self.s
        if targets is None:
            frac = float(torch.empty(1).uniform_(s.min_active_fraction, 1.0, generator=self.gen))
            routing = model.route(xb, _ks(model, frac), noisy=True)
            return routing, load_balance_loss(routing.probs, routing.mask), s.balance_weight
        routing = model.route(xb, [min(s.kappa2, n) for n in model.layer_sizes], noisy=True)
        tb = task_idx[idx]
        known = tb >= 0
        aux = torch.zeros(())
        if known.any():
            aux = torch.stack([
                F.kl_div(p[known].clamp_min(1e-8).log(), t[tb[known]], reduction="batchmean")
                for p, t in zip(routing.probs, targets, strict=True)
            ]).mean()
        return routing, aux, s.kl_weight

    def epoch(self, stage: str, epoch: int, targets: list[Tensor] | None, task_idx: Tensor | None) -> None:
        model, x, y = self.model, self.x, self.y
        model.train()
        sums, count = np.zeros(4), 0
        for idx in _batches(len(x), self.s.batch_size, self.gen):
            xb, yb = x[idx], y[idx]
            routing, aux, weight = self._routing_loss(xb, idx, targets, task_idx)
            logits = model(xb, routing.gates)
            ce = F.cross_entropy(logits, yb)
            loss = ce + weight * aux
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            acc = (logits.argmax(-1) == yb).float().mean().item()
            sums += np.array([loss.item(), ce.item(), aux.item(), acc]) * len(idx)
            count += len(idx)
        m = sums / count
        val_x, val_y = self.val
        self.history.append(EpochMetrics(stage, epoch, float(m[0]), float(m[1]), float(m[2]), float(m[3]),
                                         evaluate(model, val_x, val_y), evaluate(model, val_x, val_y, routed_k=self.half)))
        self.bar.set_postfix(stage=stage, loss=f"{m[0]:.3f}", val=f"{self.history[-1].val_acc_dense:.3f}")
        self.bar.update(1)


@torch.no_grad()
def subtask_load(model: ModularModel, x: Tensor, task_idx: Tensor, num_tasks: int) -> list[np.ndarray]:
    """Per layer the ``(T, N)`` mean router probability of each sub-task's samples."""
    model.eval()
    probs = [torch.zeros(num_tasks, n) for n in model.layer_sizes]
    counts = torch.zeros(num_tasks)
    for i in range(0, len(x), 256):
        t = task_idx[i : i + 256]
        ok = t >= 0
        for acc, p in zip(probs, model.selector.probabilities(x[i : i + 256]), strict=True):
            acc.index_add_(0, t[ok], p[ok])
        counts.index_add_(0, t[ok], torch.ones(int(ok.sum())))
    return [(p / counts.clamp_min(1).unsqueeze(1)).numpy() for p in probs]


def enhancement_targets(model: ModularModel, x: Tensor, task_idx: Tensor, num_tasks: int, kappa1: int, kappa2: int) -> list[Tensor]:
    """Target routing ``P = normalise(H * M)`` per layer, ``(T, N_l)`` each."""
    targets = []
    for load in subtask_load(model, x, task_idx, num_tasks):
        n = load.shape[1]
        k1 = max(kappa1, math.ceil(num_tasks / n))  # keep the ILP feasible for small layers
        mask = assign_modules(load, k1, min(kappa2, n))
        targets.append(torch.as_tensor(target_routing(load, mask), dtype=torch.float32))
    return targets
