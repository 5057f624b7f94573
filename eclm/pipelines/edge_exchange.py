"""A device's side of the delta exchange: the upload after adapting and the downloads it applies.

Uploads are this cycle's change of what the device trained (every tensor after dense training;
its trained modules and classifier rows after module-sparse training, see
:mod:`eclm.modules.sparse_delta`), encoded with the configured codec (:mod:`eclm.modules.codec`).
With a lossy codec the device keeps each tensor's rounding error and adds it to that tensor's next
difference (error feedback), so what the codec drops now reaches the cloud later instead of
being lost. The residual belongs to the sub-model it was computed on: it is dropped whenever the
device receives or swaps to another sub-model. A device that does not keep its local adaptation
across versions (``adaptation.keep_local: false``, FedAvg-style) also keeps the version it received
last, which the next delta download is added to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from eclm.modules.codec import encode
from eclm.modules.deltas import is_delta_key, upload_keys, upload_parts
from eclm.modules.layer import ModuleLayer
from eclm.modules.sparse_delta import Parts, put, take
from eclm.modules.spec import SubModelSpec, TrainableSpec


class DeviceExchange:
    """Encodes a device's uploads and keeps the codec's error-feedback residual.

    Args:
        layers: The modular model's layer metadata.
        codec: Wire codec of differences (``adaptation.delta_dtype``).
        statistics: Whether module-sparse uploads carry the norm statistics of their parts (the
            cloud merges statistics only with ``merge.merge_norm_statistics``).
    """

    def __init__(self, layers: Sequence[ModuleLayer], codec: str, statistics: bool) -> None:
        self.layers, self.codec, self.statistics = layers, codec, statistics
        self.residual: dict[str, Tensor] = {}
        self.received: dict[str, Tensor] = {}  # the version received last (``adaptation.keep_local: false``)

    def reset(self) -> None:
        """Forget the residual (the device now holds another sub-model)."""
        self.residual = {}

    def keys(self, state: Mapping[str, Tensor], spec: SubModelSpec, plan: TrainableSpec,
             row_keys: Sequence[str]) -> list[str]:
        """The tensors an upload after training ``plan`` carries (all of them after dense training)."""
        if plan.is_dense(spec):
            return list(state)
        return upload_keys(state, self.layers, plan, row_keys, statistics=self.statistics)

    def upload(self, after: Mapping[str, Tensor], start: Mapping[str, Tensor], spec: SubModelSpec,
               plan: TrainableSpec, row_keys: Sequence[str], classes: Sequence[int]) -> tuple[dict[str, Tensor], dict]:
        """The wire tensors of this cycle's upload and the header entries that describe them.

        Args:
            after: The adapted sub-model's state.
            start: The state before adapting, for the keys :meth:`keys` named.
            spec: The sub-model.
            plan: What was trained.
            row_keys: The classifier's tensors.
            classes: The device's classes (a module-sparse upload carries only their rows).
        """
        dense = plan.is_dense(spec)
        parts = Parts(groups=spec.groups) if dense else upload_parts(plan, row_keys, classes)
        learned = [k for k in start if is_delta_key(k, start[k])]
        full = {k: after[k].detach() - start[k] + self._pending(k, start[k]) for k in learned}
        wire, error = encode(take(full, self.layers, spec, parts, learned), self.codec)
        if self.codec != "float32":  # what the codec dropped is sent with the next difference
            kept = put(full, error, self.layers, spec, parts, differences=set())
            self.residual |= {k: v for k, v in kept.items() if bool(v.any())}
            for k in set(learned) - {k for k, v in kept.items() if bool(v.any())}:
                self.residual.pop(k, None)
        absolute = [k for k in start if k not in learned]
        wire |= {k: v.clone() for k, v in take(after, self.layers, spec, parts, absolute).items()}
        return wire, {"kind": "delta"} | ({} if dense else parts.to_meta())

    def _pending(self, key: str, like: Tensor) -> Tensor:
        r = self.residual.get(key)
        return r if r is not None and r.shape == like.shape else torch.zeros_like(like)


__all__ = ["DeviceExchange"]
