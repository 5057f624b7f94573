"""Poisoning devices for the robustness suite: a wrapper around a real ``EdgeService``.

An :class:`AttackedDevice` forwards every endpoint method to the real device service; only
``adapt`` differs. The device trains for real (on flipped labels for ``label_flip``), then its
change of the trained weights (``after - before``) is transformed and the upload is re-encoded by
the device's own exchange (the codec, its error-feedback residual, the module-sparse parts), so the
cloud receives exactly what a device with that transform built into it would send. Nothing in the
merge is touched. Attacks (docs/security.md names them the same way):

* ``sign_flip``: ``-change``; ``scale_x10`` / ``scale_x0.1``: ``10 x`` / ``0.1 x change``;
* ``noise``: each tensor's change replaced by Gaussian noise of that tensor's change norm;
* ``label_flip``: trains on its own classes permuted cyclically (class ``c_i`` labelled ``c_{i+1}``);
* ``collude``: all colluders send one shared change: the first colluder of a round sign-flips its
  change and places it in the cloud model's coordinates; every colluder uploads its sub-model's
  slices of it, so two colluders' changes are identical on every module both hold.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from eclm.data import LabelledImages
from eclm.modules.merge import ModuleUpdate, classifier_keys, merge_module_updates
from eclm.modules.spec import TrainableSpec

ATTACKS = ("sign_flip", "scale_x10", "scale_x0.1", "label_flip", "collude", "noise")
LABELS = {"clean": "none (clean)", "absent": "none, attackers absent (their devices never served)",
          "sign_flip": "sign flip", "scale_x10": "scaled x10", "scale_x0.1": "scaled x0.1", "label_flip": "trained on flipped labels", "collude": "colluding identical updates",
          "noise": "random noise (per-tensor norm of its change)"}
SCALES = {"sign_flip": -1.0, "scale_x10": 10.0, "scale_x0.1": 0.1}


class FlippedStream:
    """A device stream whose training labels are the device's own classes permuted cyclically."""

    def __init__(self, stream: Any, classes: list[int]) -> None:
        self._stream = stream
        order = sorted(classes)
        self._to = {c: order[(i + 1) % len(order)] for i, c in enumerate(order)}

    def train_set(self) -> LabelledImages:
        s = self._stream.train_set()
        labels = torch.tensor([self._to.get(int(y), int(y)) for y in s.labels], dtype=torch.int64)
        return replace(s, labels=labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Collusion:
    """What colluders share: per round, the leader's sign-flipped change in cloud coordinates."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, Tensor]] = {}
        self._full: torch.nn.Module | None = None

    def change_for(self, service: Any, change: dict[str, Tensor]) -> dict[str, Tensor]:
        """This colluder's slices of the round's shared change (the leader's, once per round)."""
        if self._full is None:  # the skeleton is weightless: materialise one copy, zeros
            self._full = copy.deepcopy(service.skeleton).to_empty(device="cpu")
        shared = self.rounds.get(service.rounds)
        if shared is None:
            zeros = {k: torch.zeros_like(v) for k, v in self._full.backbone.state_dict().items()}
            layers = service.skeleton.layers
            leader = ModuleUpdate(service.name, service.spec, {k: -v for k, v in change.items()},
                                  [[1.0] * layer.n_modules for layer in layers], 1)
            shared = merge_module_updates(zeros, layers, [leader], weighting="uniform")
            self.rounds = {service.rounds: shared}  # only the current round is needed
        own = self._full.extract(service.spec, shared).state_dict()
        return {k: own[k] for k in change}


class AttackedDevice:
    """An ``EdgeService`` whose uploads are poisoned by ``attack`` (one of :data:`ATTACKS`).

    Args:
        service: The real device service.
        attack: The attack.
        seed: Seed of the noise attack.
        collusion: The object colluders share (``attack="collude"``).
    """

    def __init__(self, service: Any, attack: str, seed: int = 0, collusion: Collusion | None = None) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; known: {ATTACKS}")
        self.service, self.attack, self.collusion = service, attack, collusion or Collusion()
        self.generator = torch.Generator().manual_seed(seed)
        if attack == "label_flip":
            service.stream = FlippedStream(service.stream, service.classes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)

    def adapt(self):
        """Train for real, transform the change of the trained weights, re-encode the upload."""
        svc = self.service
        if self.attack == "label_flip" or svc.model is None:
            return svc.adapt()
        before = {k: v.detach().clone() for k, v in svc.model.state_dict().items()}
        residual = dict(svc.exchange.residual)
        update = svc.adapt()
        params = [k for k, _ in svc.model.named_parameters()]  # in order: a set's order varies by process
        after = svc.model.state_dict()
        change = self._transform({k: after[k] - before[k] for k in params})
        svc.model.load_state_dict({k: before[k] + change[k] if k in change else after[k] for k in after})
        svc.exchange.residual = residual  # the poisoned upload, not the honest one, is what was sent
        plan = svc.trainable or TrainableSpec.dense(svc.spec)
        row_keys = classifier_keys(svc.model)
        start = {k: before[k] for k in svc.exchange.keys(before, svc.spec, plan, row_keys)}
        return update.model_copy(update={"payload": svc._payload(plan, start, row_keys)})

    def _transform(self, change: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.attack in SCALES:
            return {k: SCALES[self.attack] * v for k, v in change.items()}
        if self.attack == "noise":
            out = {}
            for k, v in change.items():
                noise = torch.randn(v.shape, generator=self.generator)
                out[k] = noise * (v.norm() / noise.norm().clamp_min(1e-12))
            return out
        return self.collusion.change_for(self.service, change)


__all__ = ["ATTACKS", "LABELS", "AttackedDevice", "Collusion", "FlippedStream"]
