"""The environments devices have met, replayed on the cloud's proxy data.

Devices report the environment they adapted in (``DeviceMetrics.environment`` and ``severity``:
a corruption and its strength, never data). The cloud applies the same corruptions to its own
proxy images, so it can measure how well its model serves every environment seen so far and
validate a merge on them, not only on clean proxy data (docs/method.md, "How the cloud learns").

Accuracy under an environment is measured the way a device meets a new model: BatchNorm
statistics are re-estimated on (corrupted) proxy training images of that environment first
(``recalibrate_norms``, what a device does on arrival with its unlabelled local data), then the
model is evaluated on the corrupted proxy validation images. That isolates what the *weights*
know about the environment from statistics any device re-estimates anyway. The statistics come
from a fixed random sample of at most ``calibration_samples`` images (``merge.calibration_samples``,
128 by default: about the unlabelled data a device holds), the same sample for every model
evaluated, so a paired comparison of two models sees the same calibration.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from eclm.data.catalog import CORRUPTION_NAMES
from eclm.data.corruptions import apply_corruption, check_corruption
from eclm.pipelines.adaptation import norm_statistics_kept, recalibrate_norms
from eclm.pipelines.mcnemar import SampleScores, score_samples

#: An environment: ``(corruption, severity)``.
Environment = tuple[str, int]


def environment_of(corruption: str | None, severity: int | None) -> Environment | None:
    """The environment a device reported, or ``None`` for the clean one or an invalid claim."""
    if corruption is None or corruption == "none" or severity is None:
        return None
    try:
        check_corruption(corruption, severity)
    except ValueError:
        return None  # a device's claim the cloud cannot replay is ignored, not trusted
    return corruption, int(severity)


def environment_name(env: Environment) -> str:
    return f"{env[0]}@{env[1]}"


def merged(known: Iterable[Environment], new: Iterable[Environment | None]) -> tuple[Environment, ...]:
    """``known`` followed by the new environments not in it (first-seen order, no duplicates)."""
    out = list(dict.fromkeys(known))
    out += [e for e in dict.fromkeys(n for n in new if n is not None) if e not in out]
    return tuple(out)


class ProxyEnvironments:
    """The cloud's proxy data under environments.

    Args:
        train_x: Proxy training images (used to re-estimate norm statistics).
        train_y: Their labels.
        val_x: Proxy validation images.
        val_y: Their labels.
        seed: Seed of the corruptions' randomness (fixed per environment, so every evaluation of
            an environment sees the same images) and of the calibration sample.
        cache_size: Corrupted image sets kept in memory.
        calibration_samples: Re-estimate norm statistics on at most this many training images
            (a fixed random sample); ``None``: on all.
    """

    def __init__(self, train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, seed: int,
                 cache_size: int = 64, calibration_samples: int | None = None) -> None:
        self.train_x, self.train_y, self.val_x, self.val_y, self.seed = train_x, train_y, val_x, val_y, seed
        self.cache_size, self.calibration_samples = cache_size, calibration_samples
        # Corrupted images are a pure function of (environment, split, classes): every validation
        # of a merge replays the same ones, so the most recent ``cache_size`` sets are kept.
        self._cache: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()

    def images(self, env: Environment | None, split: str, classes: Sequence[int] | None = None
               ) -> tuple[Tensor, Tensor]:
        """``(images, labels)`` of a proxy split under ``env`` (``None``: clean), optionally
        restricted to ``classes`` (the same tensors on every call with the same arguments; do not
        modify them)."""
        key = (env, split, None if classes is None else tuple(sorted({int(c) for c in classes})))
        hit = self._cache.get(key)
        if hit is not None:
            _move_to_end(self._cache, key)
            return hit
        x, y = (self.train_x, self.train_y) if split == "train" else (self.val_x, self.val_y)
        if classes is not None:
            mask = torch.isin(y, torch.as_tensor(list(classes), dtype=y.dtype))
            x, y = x[mask], y[mask]
        if env is not None and len(x):
            seed_key = CORRUPTION_NAMES.index(env[0]) * 10 + env[1] + (0 if split == "train" else 5)
            gen = torch.Generator().manual_seed(self.seed * 1000 + seed_key)
            x = apply_corruption(x, env[0], env[1], gen)
        self._cache[key] = (x, y)
        while len(self._cache) > self.cache_size:
            try:
                self._cache.popitem(last=False)
            except KeyError:  # another merge worker emptied it meanwhile
                break
        return x, y

    def mixed(self, envs: Sequence[Environment], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The proxy training images, each under one environment drawn uniformly from clean and
        ``envs`` (what the cloud's repair fine-tuning learns the seen environments from)."""
        if not envs:
            return self.train_x, self.train_y
        choice = torch.randint(len(envs) + 1, (len(self.train_x),), generator=generator)
        x = self.train_x.clone()
        for i, env in enumerate(envs, start=1):
            pick = choice == i
            if bool(pick.any()):
                x[pick] = self.images(env, "train")[0][pick]
        return x, self.train_y

    def scores(self, model: nn.Module, env: Environment | None, classes: Sequence[int] | None = None) -> SampleScores:
        """Per-sample correctness and true-class log-probability of ``model`` on the proxy validation
        images (of ``classes``) under ``env``, after re-estimating its norm statistics there
        (``model`` is not modified; clean: evaluated as it is). With ``classes``, the
        log-probability is taken among them (:func:`~eclm.pipelines.mcnemar.score_samples`)."""
        val_x, val_y = self.images(env, "val", classes)
        if len(val_x) == 0 or env is None:
            return score_samples(model, val_x, val_y, classes=classes)
        with norm_statistics_kept(model):
            recalibrate_norms(model, self.calibration_images(env, classes))
            return score_samples(model, val_x, val_y, classes=classes)

    def correct(self, model: nn.Module, env: Environment | None, classes: Sequence[int] | None = None) -> Tensor:
        """Per-sample correctness ``(N,)`` of :meth:`scores`."""
        return self.scores(model, env, classes).correct

    def calibration_images(self, env: Environment | None, classes: Sequence[int] | None = None) -> Tensor:
        """The training images (under ``env``, of ``classes``) that norm statistics are re-estimated
        on: all of them, or a fixed random sample of ``calibration_samples`` in their order."""
        x = self.images(env, "train", classes)[0]
        cap = self.calibration_samples
        if cap is None or len(x) <= cap:
            return x
        gen = torch.Generator().manual_seed(self.seed * 1000 + 999)
        return x[torch.randperm(len(x), generator=gen)[:cap].sort().values]

    def accuracy(self, model: nn.Module, env: Environment | None, classes: Sequence[int] | None = None) -> float:
        """Accuracy of :meth:`correct` (NaN without validation images)."""
        mask = self.correct(model, env, classes)
        return float(mask.float().mean()) if len(mask) else float("nan")

    def mean_accuracy(self, model: nn.Module, envs: Sequence[Environment]) -> float | None:
        """Mean accuracy over ``envs`` (``None`` if there are none)."""
        accs = [self.accuracy(model, e) for e in envs]
        return sum(accs) / len(accs) if accs else None


def _move_to_end(cache: OrderedDict, key) -> None:
    """Mark ``key`` recently used; a no-op if another thread evicted it meanwhile.

    The cache is shared by the merge's worker threads (:mod:`eclm.pipelines.merge_workers`):
    every access is one ``OrderedDict`` operation (atomic under the GIL) that tolerates the
    others, so no lock is needed and a computed set is at worst computed twice, identically.
    """
    try:
        cache.move_to_end(key)
    except KeyError:
        pass


__all__ = ["Environment", "ProxyEnvironments", "environment_name", "environment_of", "merged"]
