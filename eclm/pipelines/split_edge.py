"""The device side of split learning: its chain prefix, its worker, and the wire messages.

Split execution: :meth:`ModularModel.chain` turns any extracted sub-model (or the full model) into
named stages ``stem, blocks..., head`` whose composition equals ``sub(x)`` and which share the
sub-model's modules. A *cut* ``c`` in ``1..L`` gives the device stages ``[0, c)`` and the cloud
stages ``[c, L)`` (:func:`cut_chain`); no block is copied or re-implemented. Weights cross the
link keyed by the *sub-model's* tensor names (:func:`segment_state`), so a device part is just a
prefix of a sub-model's state dict and merges like any sub-model update.

Messages are safetensors bytes (no pickle): a smashed activation carries the codec payload, the
labels and the codec's exact size in bits; a gradient is one float32 tensor. Both sides use the
same :func:`pack_smashed` / :func:`unpack_smashed` pair.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from eclm.modules import ModularModel, SubModelSpec, pack_state, unpack_state
from eclm.split import EncodedActivation, LocalBatchSampler, OptimizerSettings, SmashedCodec
from eclm.split.config import SplitConfig
from eclm.split.factory import build_codec, build_sampler, optimizer_settings
from eclm.split.norms import batch_safe_norms

__all__ = [
    "SplitDeviceWorker",
    "cut_chain",
    "pack_gradient",
    "pack_smashed",
    "segment_state",
    "unpack_gradient",
    "unpack_smashed",
]

Stages = Sequence[tuple[str, nn.Module]]


def cut_chain(stages: Stages, cut: int) -> tuple[nn.Sequential, nn.Sequential]:
    """Split chain stages at ``cut``: the device runs ``[0, cut)``, the cloud ``[cut, L)``.

    Args:
        stages: ``ModularModel.chain(sub)`` of a sub-model (modules are shared, not copied).
        cut: Cut index in ``1..L``; ``cut == L`` leaves the cloud only the loss.

    Returns:
        ``(device_part, cloud_part)``; ``cloud_part(device_part(x)) == sub(x)``.

    Raises:
        ValueError: If ``cut`` is not an int in ``1..L``.
    """
    if not isinstance(cut, int) or isinstance(cut, bool) or not 1 <= cut <= len(stages):
        raise ValueError(f"cut must be an int in 1..{len(stages)} (chain stages), got {cut!r}")
    modules = [stage for _, stage in stages]
    return nn.Sequential(*modules[:cut]), nn.Sequential(*modules[cut:])


def segment_state(model: nn.Module, segment: nn.Module) -> dict[str, Tensor]:
    """The tensors of ``segment`` keyed by their names in ``model`` (which ``segment`` shares).

    Chain stages keep the model's modules but not its names (a block stage ``layer1.0`` has
    ``conv1.weight``); matching tensors by identity recovers ``layer1.0.conv1.weight``.

    Raises:
        ValueError: If a tensor of ``segment`` is not one of ``model``'s.
    """
    names = {id(t): k for k, t in model.state_dict(keep_vars=True).items()}
    out: dict[str, Tensor] = {}
    for key, tensor in segment.state_dict(keep_vars=True).items():
        if id(tensor) not in names:
            raise ValueError(f"segment tensor {key!r} is not a tensor of the model")
        out[names[id(tensor)]] = tensor.detach()
    return out


# ---------------------------------------------------------------------------------- wire format
def pack_smashed(encoded: EncodedActivation, labels: Tensor, **meta: object) -> bytes:
    """Serialise one smashed-activation message (codec payload + labels + JSON metadata).

    Args:
        encoded: The codec's output for a ``(b, ...)`` activation.
        labels: ``(b,)`` int64 labels (the server computes the loss).
        **meta: JSON-able extras (device, epoch, step, ...).

    Returns:
        safetensors bytes; ``size_bits`` in the header is the codec's exact payload size.
    """
    tensors = {f"payload.{k}": v for k, v in encoded.payload.items()} | {"labels": labels}
    header = {
        "codec": encoded.codec,
        "shape": list(encoded.shape),
        "dtype": str(encoded.dtype).removeprefix("torch."),
        "size_bits": int(encoded.size_bits),
        "header": dict(encoded.header),
        **meta,
    }
    return pack_state(tensors, meta=header)


def unpack_smashed(data: bytes) -> tuple[EncodedActivation, Tensor, dict]:
    """Inverse of :func:`pack_smashed`: ``(encoded, labels, meta)``.

    Raises:
        MalformedPayloadError: If the bytes are not a safetensors payload.
        ValueError: If the header lacks codec fields or the labels.
    """
    tensors, _, meta = unpack_state(data)
    missing = [k for k in ("codec", "shape", "dtype", "size_bits") if k not in meta]
    if missing or "labels" not in tensors:
        raise ValueError(f"smashed message lacks {missing or ['labels']}")
    dtype = getattr(torch, str(meta["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"smashed message has unknown dtype {meta['dtype']!r}")
    payload = {k.removeprefix("payload."): v for k, v in tensors.items() if k.startswith("payload.")}
    encoded = EncodedActivation(
        codec=str(meta["codec"]),
        shape=tuple(int(s) for s in meta["shape"]),
        dtype=dtype,
        size_bits=int(meta["size_bits"]),
        payload=payload,
        header=dict(meta.get("header", {})),
    )
    return encoded, tensors["labels"], meta


def pack_gradient(grad: Tensor, **meta: object) -> bytes:
    """Serialise the gradient sent back to a device (float32, uncompressed)."""
    return pack_state({"grad": grad.detach().float()}, meta=dict(meta))


def unpack_gradient(data: bytes) -> tuple[Tensor, dict]:
    """Inverse of :func:`pack_gradient`: ``(grad, meta)``."""
    tensors, _, meta = unpack_state(data)
    if "grad" not in tensors:
        raise ValueError("gradient message holds no 'grad' tensor")
    return tensors["grad"], meta


# ---------------------------------------------------------------------------------- the worker
class SplitDeviceWorker:
    """One device's part of a parallel split-learning session.

    Per global step the device draws its local batch (the same sampler object as the server,
    built from the client sizes and seed, so the server only ever announces counts), runs its
    stages, and sends the codec's encoding of the activation; when the gradient arrives it
    back-propagates it straight-through (the codec is skipped backwards) and steps SGD.

    Args:
        name: Device name (carried in every message).
        sub: The sub-model whose prefix this device holds (the rest may live on ``meta``).
        stages: ``chain(sub)``.
        cut: Device runs stages ``[0, cut)``.
        spec: The sub-model's spec (stamped on state payloads).
        codec: Uplink activation codec.
        optimizer: SGD settings.
        sampler: Local batch sampler over all clients' sizes.
        client_index: This device's column in the sampler.
        train: Local ``(x, y)`` training data, ``x: (n, C, H, W)``, ``y: (n,)`` int64.
        test: Local ``(x, y)`` test data for split evaluation.

    Raises:
        ValueError: If the device part still has unloaded (``meta``) tensors, or the data size
            differs from the sampler's size for this client.
    """

    def __init__(self, name: str, sub: nn.Module, stages: Stages, cut: int, spec: SubModelSpec,
                 codec: SmashedCodec, optimizer: OptimizerSettings, sampler: LocalBatchSampler,
                 client_index: int, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]) -> None:
        self.name, self.sub, self.cut, self.spec = name, sub, cut, spec
        self.prefix, _ = cut_chain(stages, cut)
        meta = [k for k, t in segment_state(sub, self.prefix).items() if t.is_meta]
        if meta:
            raise ValueError(f"device part of {name!r} lacks weights for {meta[:3]}")
        if not 0 <= client_index < sampler.num_clients:
            raise ValueError(f"client_index {client_index} outside 0..{sampler.num_clients - 1}")
        if int(sampler.client_sizes[client_index]) != len(train[0]):
            raise ValueError(
                f"device {name!r} holds {len(train[0])} samples, the sampler expects "
                f"{int(sampler.client_sizes[client_index])}"
            )
        self.codec, self.settings, self.sampler, self.index = codec, optimizer, sampler, client_index
        self.train_x, self.train_y = train
        self.test_x, self.test_y = test
        self.optimizer = optimizer.build(list(self.prefix.parameters()))
        self._plan: tuple[int, list] | None = None  # (epoch, per-step index arrays of this client)
        self._pending: tuple[int, int, Tensor] | None = None  # (epoch, step, smashed) awaiting its gradient
        self.records: dict[tuple[int, int], dict] = {}

    @classmethod
    def from_payload(cls, name: str, skeleton: ModularModel, payload: bytes, config: SplitConfig,
                     client_sizes: Sequence[int], client_index: int, train: tuple[Tensor, Tensor],
                     test: tuple[Tensor, Tensor]) -> SplitDeviceWorker:
        """Build the worker from the cloud's device-part payload (safetensors, spec, ``cut``).

        The sub-model is materialised from the weightless ``skeleton``; only the prefix gets
        real tensors, so the device never allocates the cloud part.

        Raises:
            MalformedPayloadError: If the payload does not decode.
            ValueError: If it carries no spec or cut, or tensors do not fit the sub-model.
        """
        state, spec, meta = unpack_state(payload)
        if spec is None or "cut" not in meta:
            raise ValueError("device-part payload must carry a spec and a 'cut'")
        sub = skeleton.extract(spec)
        result = sub.load_state_dict(state, strict=False, assign=True)
        if result.unexpected_keys:
            raise ValueError(
                f"device-part payload has tensors the sub-model lacks: {result.unexpected_keys[:3]}"
            )
        # Chain only after loading: stages that register raw parameters must see the loaded ones.
        stages = skeleton.chain(sub)
        sampler = build_sampler(config, client_sizes)
        return cls(name, sub, stages, int(meta["cut"]), spec, build_codec(config.codec),
                   optimizer_settings(config), sampler, client_index, train, test)

    # ------------------------------------------------------------------ protocol
    def _indices(self, epoch: int, step: int) -> Tensor:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, [row[self.index] for row in self.sampler.epoch_indices(epoch)])
        steps = self._plan[1]
        if not 0 <= step < len(steps) or steps[step].size == 0:
            raise ValueError(f"device {self.name!r} has no samples at epoch {epoch} step {step}")
        return torch.from_numpy(steps[step])

    def forward(self, epoch: int, step: int, gradient: bytes | None = None) -> bytes:
        """Apply a pending gradient (if given), then run the device part on this step's batch.

        Args:
            epoch: Sampler epoch.
            step: Global step within the epoch (this device must be active in it).
            gradient: The gradient message of this device's previous step, if not yet applied.

        Returns:
            The smashed-activation message (:func:`pack_smashed`).

        Raises:
            RuntimeError: If a previous step still waits for its gradient.
        """
        if gradient is not None:
            self.backward(gradient)
        if self._pending is not None:
            raise RuntimeError(f"device {self.name!r}: step {self._pending[:2]} never received its gradient")
        idx = self._indices(epoch, step)
        self.prefix.train()
        start = time.perf_counter()
        with batch_safe_norms(self.prefix, len(idx)):
            smashed = self.prefix(self.train_x[idx])
        encoded = self.codec.encode(smashed.detach())
        seconds = time.perf_counter() - start
        labels = self.train_y[idx]
        self._pending = (epoch, step, smashed)
        self.records[(epoch, step)] = {
            "epoch": epoch,
            "step": step,
            "samples": len(idx),
            "forward_s": seconds,
            "backward_s": 0.0,
            "bits_up": encoded.size_bits,
            "label_bits": 64 * len(idx),
            "bits_down": 0,
        }
        return pack_smashed(encoded, labels, device=self.name, epoch=epoch, step=step, samples=len(idx))

    def backward(self, gradient: bytes) -> None:
        """Back-propagate the server's gradient through the device part and step SGD.

        Raises:
            RuntimeError: If no step is pending.
            ValueError: If the gradient belongs to another step or has the wrong shape.
        """
        if self._pending is None:
            raise RuntimeError(f"device {self.name!r} received a gradient but no step is pending")
        epoch, step, smashed = self._pending
        grad, meta = unpack_gradient(gradient)
        at = (meta.get("device"), meta.get("epoch"), meta.get("step"))
        if at != (self.name, epoch, step) or grad.shape != smashed.shape:
            raise ValueError(
                f"device {self.name!r}: gradient for {at} shape "
                f"{tuple(grad.shape)} does not match pending step {(epoch, step)} "
                f"shape {tuple(smashed.shape)}"
            )
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        smashed.backward(grad.to(smashed.dtype))  # straight-through: the codec is skipped backwards
        self.optimizer.step()
        record = self.records[(epoch, step)]
        record["backward_s"] = time.perf_counter() - start
        record["bits_down"] = 32 * grad.numel()
        self._pending = None

    def epoch_end(self) -> dict:
        """The device part's state after an epoch, and the epoch's step records.

        Returns:
            ``{"device", "state": payload bytes, "records": [...], "samples": int}``.

        Raises:
            RuntimeError: If a step still waits for its gradient.
        """
        if self._pending is not None:
            raise RuntimeError(f"device {self.name!r}: epoch ended with step {self._pending[:2]} pending")
        records = [self.records[k] for k in sorted(self.records)]
        self.records = {}
        return {
            "device": self.name,
            "state": self.state_payload(),
            "records": records,
            "samples": sum(r["samples"] for r in records),
        }

    def state_payload(self) -> bytes:
        """The device part's tensors, keyed by sub-model names, with the spec and cut."""
        return pack_state(
            segment_state(self.sub, self.prefix), self.spec, {"cut": self.cut, "device": self.name}
        )

    def load(self, payload: bytes) -> None:
        """Load aggregated device-part weights; restart the optimiser if they were averaged.

        A fresh optimiser state after averaging is FedAvg's convention; weights nobody else
        trained keep momentum.

        Raises:
            ValueError: If the payload's tensor names differ from the device part's.
        """
        state, _, meta = unpack_state(payload)
        own = segment_state(self.sub, self.prefix)
        if set(state) != set(own):
            raise ValueError(f"aggregated state for {self.name!r} has different tensors than its device part")
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(state[key])
        if meta.get("averaged", True):
            self.optimizer.state.clear()

    @torch.no_grad()
    def smash_test(self, batch_size: int = 256) -> bytes:
        """The encoded activations of the local test set (eval mode), for split evaluation.

        Raises:
            ValueError: If the device holds no test samples.
        """
        if len(self.test_x) == 0:
            raise ValueError(f"device {self.name!r} holds no test samples to evaluate on")
        was = self.prefix.training
        self.prefix.eval()
        parts = [self.prefix(self.test_x[i : i + batch_size]) for i in range(0, len(self.test_x), batch_size)]
        self.prefix.train(was)
        encoded = self.codec.encode(torch.cat(parts))
        return pack_smashed(encoded, self.test_y, device=self.name, purpose="evaluate")

    def describe(self) -> dict:
        """Facts about the device part (JSON-able)."""
        params = sum(p.numel() for p in self.prefix.parameters())
        return {
            "device": self.name,
            "cut": self.cut,
            "params": params,
            "train_samples": len(self.train_x),
            "test_samples": len(self.test_x),
        }
