"""Edge adaptation of a sub-model on drifting local data (continual learning).

Fine-tuning mixes fresh local samples with a replay buffer of earlier ones to limit forgetting,
and BatchNorm statistics are re-estimated on local data after the module set changed (a freshly
extracted or shrunk sub-model inherits statistics measured with other modules active).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eclm.data.replay import ReplayBuffer
from eclm.modules.merge import classifier_keys
from eclm.modules.sparse_training import SparsePlan, SparseTraining, module_sparse
from eclm.modules.trainable import ACTIVATION_FACTOR, TrainingMemory


@dataclass
class TrainStats:
    """Outcome of one local fine-tuning run.

    ``prefix_cached`` says whether module-sparse training kept the frozen stages' output for every
    sample (``None``: no stage was frozen). ``clipped`` counts the steps whose gradient norm was
    clipped (``max_grad_norm``) and ``max_grad_norm_seen`` is the largest gradient norm before
    clipping (both ``None`` without clipping).
    """

    loss_first_epoch: float
    loss_last_epoch: float
    batches: int
    samples: int
    seconds: float
    prefix_cached: bool | None = None
    clipped: int | None = None
    max_grad_norm_seen: float | None = None

    @property
    def seconds_per_batch(self) -> float:
        return self.seconds / max(self.batches, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``(x, y)`` in eval mode."""
    acc, loss, _ = evaluate_own(model, x, y, None, batch_size)
    return acc, loss


@torch.no_grad()
def evaluate_own(model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None,
                 batch_size: int = 256) -> tuple[float, float, float]:
    """``(accuracy, mean cross-entropy, own-class accuracy)`` of ``model`` on ``(x, y)`` in eval mode.

    Own-class accuracy takes the argmax over ``classes`` only (a label-skewed device knows which
    classes it can see); with ``classes=None`` it equals the accuracy. All three come from one
    forward pass; NaN without data.
    """
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    own = torch.as_tensor(sorted(set(classes))) if classes else None
    was = model.training
    model.eval()
    correct, correct_own, loss = 0, 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        correct += int((logits.argmax(-1) == yb).sum())
        if own is not None:
            correct_own += int((own[logits[:, own].argmax(-1)] == yb).sum())
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
    model.train(was)
    return correct / len(x), loss / len(x), (correct_own if own is not None else correct) / len(x)


def _norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def norm_statistics_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every BatchNorm's running statistics of ``model`` on exit (what a deep copy would
    protect, e.g. around :func:`recalibrate_norms`, without copying the weights)."""
    norms = _norm_layers(model)
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None} for m in norms]
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved, strict=True):
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


@torch.no_grad()
def recalibrate_norms(model: nn.Module, x: Tensor, batch_size: int = 64) -> int:
    """Re-estimate every BatchNorm's running statistics on ``x`` (cumulative average).

    Returns:
        The number of BatchNorm layers recalibrated.
    """
    norms = _norm_layers(model)
    if not norms or len(x) < 2:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    was = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
        m.train()
    for i in range(0, len(x), batch_size):
        if len(x[i : i + batch_size]) > 1:
            model(x[i : i + batch_size])
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    model.train(was)
    return len(norms)


def finetune(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    momentum: float = 0.9,
    replay: ReplayBuffer | None = None,
    replay_ratio: float = 0.5,
    generator: torch.Generator | None = None,
    local_classes: list[int] | None = None,
    sparse: SparsePlan | None = None,
    cache_limit: float | None = None,
    max_grad_norm: float | None = None,
) -> TrainStats:
    """Fine-tune ``model`` in place on local data with optional replay.

    Each batch of ``batch_size`` fresh samples is extended with ``round(replay_ratio *
    batch_size)`` samples from ``replay``; afterwards the fresh samples are added to ``replay``.

    With ``local_classes`` the softmax is restricted to those classes (logits of other classes
    are masked out of the loss), so a label-skewed device does not push down the classifier rows
    of classes it never sees; those rows stay as the cloud sent them, which keeps module-wise
    merging of the shared head from erasing other devices' classes.

    With ``sparse`` only what its trainable spec names is trained (module-sparse adaptation,
    :mod:`eclm.modules.sparse_training`): the optimizer holds only those parameters, and the
    stages before the earliest trainable one are frozen whole (eval mode, no autograd). Their
    output for the local samples and the replay buffer's samples is computed once and kept, and
    each batch runs only the stages after them, unless keeping it would take more than
    ``cache_limit`` bytes (a device passes the training memory its plan leaves free, see
    :meth:`~eclm.pipelines.edge_resources.EdgeResourcesMixin.cache_headroom`): then each batch runs
    the frozen stages on its own samples, which costs their compute once per epoch instead of once.

    With ``max_grad_norm`` each step's gradient (of every trained parameter together) is scaled
    down to that norm when it is larger (``torch.nn.utils.clip_grad_norm_``), so that one batch
    whose loss spikes cannot move the weights far (docs/method.md, "Gradient spikes").
    """
    use_replay = replay is not None and len(replay) > 0 and replay_ratio > 0
    if sparse is None or sparse.trainable.is_dense(sparse.spec):
        def batch(idx: Tensor) -> tuple[Tensor, Tensor]:
            return replay.mix(x[idx], y[idx], replay_ratio) if use_replay else (x[idx], y[idx])

        return _train(model, list(model.parameters()), batch, model, len(x), epochs, lr, batch_size, momentum,
                      generator, local_classes, replay, x, y, max_grad_norm)
    with module_sparse(model, sparse) as st:
        batch, cached = _sparse_batches(st, x, y, replay if use_replay else None, replay_ratio, batch_size,
                                        cache_limit)
        stats = _train(model, st.params, batch, st.suffix, len(x), epochs, lr, batch_size, momentum,
                       generator, local_classes, replay, x, y, max_grad_norm)
        stats.prefix_cached = cached if st.frozen else None
        return stats


def _sparse_batches(
    st: SparseTraining, x: Tensor, y: Tensor, replay: ReplayBuffer | None, replay_ratio: float, batch_size: int,
    cache_limit: float | None,
) -> tuple[Callable[[Tensor], tuple[Tensor, Tensor]], bool]:
    """``(batch(fresh sample indices) -> (frozen stages' output, labels), cached)`` for module-sparse
    training: the frozen stages' output of every local and replayed sample is computed once when it
    fits ``cache_limit`` (``cached``), else per batch; either way a batch draws the replayed rows
    :meth:`~eclm.data.replay.ReplayBuffer.mix` would draw."""
    stored = replay.stored() if replay is not None else None
    rows_kept = len(x) + (len(stored[0]) if stored is not None else 0)
    cache = cache_limit is None or not st.frozen or rows_kept * st.prefix(x[:1]).nbytes <= cache_limit
    features = st.prefix(x, batch_size) if cache else x
    replayed = None if stored is None else st.prefix(stored[0], batch_size) if cache else stored[0]

    def batch(idx: Tensor) -> tuple[Tensor, Tensor]:
        count = int(round(replay_ratio * len(idx))) if stored is not None else 0
        if count == 0:
            inputs, labels = features[idx], y[idx]
        else:
            rows = replay.sample_rows(count)
            inputs = torch.cat([features[idx], replayed[rows]])
            labels = torch.cat([y[idx], stored[1][rows].to(y.dtype)])
        return (inputs if cache else st.prefix(inputs, len(inputs))), labels

    return batch, cache


def _train(model: nn.Module, params: list[nn.Parameter], batch, forward, n: int, epochs: int, lr: float,
           batch_size: int, momentum: float, generator: torch.Generator | None, local_classes: list[int] | None,
           replay: ReplayBuffer | None, x: Tensor, y: Tensor, max_grad_norm: float | None = None) -> TrainStats:
    """The training loop of :func:`finetune`: ``batch(fresh sample indices)`` gives a batch's inputs
    and labels (replayed samples appended), ``forward`` its logits, each step's gradient clipped to
    ``max_grad_norm``; afterwards the fresh samples join ``replay``."""
    gen = generator or torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum) if params else None
    mask: Tensor | None = None
    model.train()
    start = time.perf_counter()
    epoch_losses: list[float] = []
    batches = samples = 0
    clipped, largest = 0, 0.0
    for _ in range(epochs if opt is not None else 0):
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue  # BatchNorm cannot train on a single sample
            xb, yb = batch(idx)
            logits = forward(xb)
            if local_classes:
                mask = _class_mask(mask, logits.shape[-1], local_classes, yb)
                logits = logits + mask
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
                clipped += norm > max_grad_norm
                largest = max(largest, norm)
            opt.step()
            total += loss.item() * len(yb)
            count += len(yb)
            batches += 1
            samples += len(yb)
        epoch_losses.append(total / max(count, 1))
    if replay is not None:
        replay.add(x, y)
    model.eval()
    first, last = (epoch_losses[0], epoch_losses[-1]) if epoch_losses else (float("nan"), float("nan"))
    return TrainStats(loss_first_epoch=first, loss_last_epoch=last, batches=batches, samples=samples,
                      seconds=time.perf_counter() - start, clipped=clipped if max_grad_norm is not None else None,
                      max_grad_norm_seen=largest if max_grad_norm is not None else None)


def _class_mask(mask: Tensor | None, n_classes: int, local_classes: list[int], labels: Tensor) -> Tensor:
    """Logit mask keeping the device's classes (and those of replayed samples) in the softmax."""
    if mask is None:
        mask = torch.full((n_classes,), float("-inf"))
        mask[torch.as_tensor(sorted(set(local_classes) | set(labels.tolist())))] = 0.0
    mask[labels] = 0.0  # replayed samples of a class keep that class active
    return mask


def effective_batch(batch_size: int, replay_ratio: float, replay: bool) -> int:
    """Samples per training batch: fresh ones plus the replayed share."""
    return batch_size + (int(round(replay_ratio * batch_size)) if replay else 0)


def training_memory_model(model: nn.Module, batch: float) -> TrainingMemory:
    """The training-memory model (:class:`~eclm.modules.trainable.TrainingMemory`) of a timm model
    (its classifier's row size and class count) at ``batch`` samples per batch."""
    head = dict(model.named_parameters())
    keys = classifier_keys(model)
    weight = next((head[k] for k in keys if head[k].ndim == 2), None)
    if weight is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier")
    return TrainingMemory(batch=batch, head_row_params=sum(head[k][0].numel() for k in keys),
                          num_classes=weight.shape[0])


def training_memory_bytes(params: float, activation_bytes: float, batch_size: int) -> float:
    """Estimated peak memory of dense training: fp32 weights + grads + momentum, and for one batch
    the kept activations, their gradients and backward's temporaries
    (:data:`~eclm.modules.trainable.ACTIVATION_FACTOR`)."""
    return 3 * 4 * params + ACTIVATION_FACTOR * activation_bytes * batch_size
