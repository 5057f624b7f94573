"""Shared pieces of suite ``split``: the platform config of a split setting and one split round of it.

Every part of the suite trains through the platform's one split protocol:
:func:`eclm.campaign.split_round.run_split_round` driving the cloud's and the devices' ``split_*``
service methods, bound in-process by :class:`~eclm.campaign.local.LocalFleet` (or over Ray actors
by the Ray part). The model is the platform's modular timm ResNet-18 (stage widths 16/32/64/128,
two modules per layer: ten chain stages) on sklearn digits at 16x16 grey; devices get their data
from the platform's partition (``data.classes_per_device``, ``data.samples_per_device``).

Nothing here imports Ray.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from eclm.campaign.local import LocalFleet
from eclm.campaign.results import SplitRoundResult
from eclm.campaign.split_round import run_split_round
from eclm.config import PlatformConfig
from eclm.data import build_source, build_split
from eclm.data.config import DataConfig
from eclm.modules import ModularModel, rebuild_submodel, unpack_state
from eclm.pipelines.adaptation import evaluate
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService, device_skeleton

__all__ = ["CHANNELS", "IMAGE_SIZE", "SplitFleet", "data_config", "platform_config", "reservoir"]

CHANNELS, IMAGE_SIZE = (16, 32, 64, 128), 16
_TIMEOUT_S = 1800.0


def data_config(*, devices: int, classes: int, samples: tuple[int, int], seed: int) -> dict:
    """Digits at 16x16 grey, clean (no drift corruption); 1% to the cloud, 20% of the rest held out.

    The cloud's share is as small as the platform allows (split rounds never touch it); the held-out
    20% (about 356 images) is the test set. Devices draw their local sets from the remaining
    reservoir of their classes (``samples`` = inclusive size range).
    """
    return {"source": "digits", "image_size": IMAGE_SIZE, "channels": 1, "num_devices": devices,
            "classes_per_device": classes, "samples_per_device": list(samples), "cloud_fraction": 0.01,
            "test_fraction": 0.2, "drift": {"corruptions": ["none"]}, "seed": seed}


def platform_config(name: str, data: dict, split: dict, devices: list[dict], *, seed: int, workdir: str,
                    ray: dict | None = None) -> PlatformConfig:
    """The platform config of one split setting: every device in split mode, the model of the suite."""
    return PlatformConfig.from_dict({
        "name": name, "workdir": workdir, "seed": seed, "data": data,
        "backbone": {"name": "resnet18", "kwargs": {"channels": list(CHANNELS)}, "modules_per_layer": 2},
        "devices": [{"mode": "split", **d} for d in devices],
        "split": split,
        "tracking": {"tracking_uri": f"sqlite:///{workdir}/mlruns.db"},
        **({"ray": ray} if ray else {}),
    })


def reservoir(data: dict) -> tuple[int, tuple[Tensor, Tensor]]:
    """The devices' training reservoir size and the held-out test set (every class) of ``data``.

    The partition cuts each class into cloud / device train / device test before it deals classes
    to devices, so one device holding every class sees exactly the reservoirs of any setting with
    the same seed and fractions.
    """
    return _reservoir(json.dumps(data, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _reservoir(data_json: str) -> tuple[int, tuple[Tensor, Tensor]]:
    data = json.loads(data_json)
    cfg = DataConfig.model_validate({**data, "num_devices": 1, "classes_per_device": 10,
                                     "samples_per_device": [1, 1]})
    images = build_source(cfg).load()
    (pool,) = build_split(images, cfg).devices
    test = torch.as_tensor(pool.test_indices, dtype=torch.int64)
    return len(pool.train_indices), (images.images[test], images.labels[test])


@dataclass
class SplitFleet:
    """A cloud and its split devices as services in this process, behind the endpoint protocol.

    Args:
        cfg: The platform config.
        cloud_factory: Builds the cloud service from the config (a subclass may pin the plan).
        device_factory: Builds device ``i``'s service: ``(cfg, i, skeleton_model=...)``.
    """

    cfg: PlatformConfig
    cloud_factory: Callable[[PlatformConfig], CloudService] = CloudService
    device_factory: Callable[..., EdgeService] = EdgeService

    def __post_init__(self) -> None:
        self.cloud = self.cloud_factory(self.cfg)
        self.skeleton: ModularModel = device_skeleton(self.cfg, self.cloud.num_classes)
        self.edges = {d.name: self.device_factory(self.cfg, i, skeleton_model=self.skeleton)
                      for i, d in enumerate(self.cfg.devices)}
        self.fleet = LocalFleet(lambda: self.cloud, {n: (lambda e=e: e) for n, e in self.edges.items()})
        selector = self.cloud.selector_payload()
        self.summaries = {n: e.summary(selector) for n, e in self.edges.items()}

    def round(self, epochs: int) -> SplitRoundResult:
        """One split round of ``epochs`` epochs (the platform's protocol); raises if it failed.

        Raises:
            RuntimeError: If any device failed (the benchmark has no use for a partial round).
        """
        return checked(run_split_round(self.fleet, self.summaries, epochs, self.cloud.version, _TIMEOUT_S))

    def adopt(self, result: SplitRoundResult) -> None:
        """Load the round's aggregated model into the cloud, so the next round continues from it.

        Stands in for the merge between rounds (whose server step size and validation would slow
        training); valid because the split sub-model is the whole model here.

        Raises:
            ValueError: If the round trained a sub-model narrower than the cloud model.
        """
        state, spec, _ = unpack_state(next(iter(result.uploads.values())).payload)
        if spec != self.cloud.model.full_spec():
            raise ValueError("the split round trained a narrower sub-model; it cannot replace the cloud model")
        self.cloud.model.backbone.load_state_dict(state)


def checked(result: SplitRoundResult) -> SplitRoundResult:
    """``result`` if every device took part; else a one-line error with the first failures.

    Raises:
        RuntimeError: If the round reports failures.
    """
    if result.failures:
        raise RuntimeError(f"split round failed: {dict(list(result.failures.items())[:3])}")
    return result


def held_out_accuracy(result: SplitRoundResult, skeleton: ModularModel, test: tuple[Tensor, Tensor]) -> float:
    """Accuracy of the round's aggregated model on the held-out set (eval mode, every class)."""
    state, spec, _ = unpack_state(next(iter(result.uploads.values())).payload)
    with torch.no_grad():
        return evaluate(rebuild_submodel(skeleton, spec, state), *test)[0]


def sample_range(total: int, clients: int, spread: float = 0.6) -> tuple[int, int]:
    """Local set sizes drawn uniformly around ``total / clients`` (+-``spread``): uneven sizes."""
    mean = total / clients
    return max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread)))


def bits_up(result: SplitRoundResult) -> float:
    """Codec payload bits of every device's training activations in the round."""
    return float(sum(result.round_metrics[f"split/{n}/bits_activations"] for n in result.report["devices"]))


def elements_up(result: SplitRoundResult, cut: int, epochs: int) -> float:
    """Activation elements the devices sent in training (samples x epochs x elements per sample)."""
    per_sample = result.report["costs"]["activation_bytes"][cut] / 4
    return float(sum(result.report["client_sizes"]) * epochs * per_sample)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def split_settings(**overrides: object) -> dict:
    """The split section shared by the GPSL and codec parts (overridden per setting)."""
    base = {"global_batch": 32, "lr": 0.05, "momentum": 0.9, "cut_policy": "fixed", "fixed_cut": 1,
            "cost_profile": "flops", "sampler": "global"}
    return {**base, **overrides}
