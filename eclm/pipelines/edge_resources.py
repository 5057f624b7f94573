"""What a device's resources allow: its profile, its budget, its training memory, the local swap.

Mixed into :class:`~eclm.pipelines.edge_service.EdgeService`. The device turns its current
resources into the same budget the cloud would (:mod:`eclm.pipelines.profiler`) from the cost
table it received, so after a resource drop it swaps to the best subset of the modules it holds
(and, with module-sparse adaptation, the best trainable subset within its new memory) without a
round trip to the cloud.
"""

from __future__ import annotations

from eclm.campaign.messages import Resources, SwapReport
from eclm.modules import SubModelSpec, narrow, shrink_submodel
from eclm.modules.spec import DeviceProfile
from eclm.modules.trainable import TrainingMemory, derive_trainable
from eclm.pipelines.adaptation import effective_batch, recalibrate_norms, training_memory_model
from eclm.pipelines.profiler import budget_from_resources, measure_resources


class EdgeResourcesMixin:
    """Resource methods; expects ``cfg``, ``device``, ``name``, ``resources``, ``memory_overridden``,
    ``model``, ``spec``, ``costs``, ``trainable``, ``skeleton``, ``stream``, ``exchange``,
    ``importance()`` and ``_save()`` on the host class."""

    def _initial_resources(self) -> dict:
        d = self.device
        res = {"memory_mb": d.memory_mb, "gflops": d.gflops, "bandwidth_mbps": d.bandwidth_mbps,
               "params_fraction": d.params_fraction,
               "latency_s": d.latency_ms / 1000 if d.latency_ms is not None else None}
        if d.measure:
            measured = measure_resources()
            res = {k: (v if v is not None else measured.get(k)) for k, v in res.items()}
        return res

    def profile(self) -> Resources:
        """The device's current resources: configured values, or re-measured memory for a device
        with ``measure: true`` and no configured memory (available memory changes over time)."""
        if self.device.measure and self.device.memory_mb is None and not self.memory_overridden:
            self.resources["memory_mb"] = measure_resources(compute=False)["memory_mb"]
        return Resources(**self.resources)

    def echo_size(self, data: bytes) -> int:
        """Receive ``data`` and return its size (the driver times this to measure the link)."""
        return len(data)

    def set_resources(self, changes: Resources) -> Resources:
        """Change resources (emulates a device losing memory, compute or bandwidth); unset fields stay."""
        update = changes.as_dict()
        self.memory_overridden = self.memory_overridden or "memory_mb" in update
        self.resources.update(update)
        self._save()
        return self.profile()

    def shrink(self, changes: Resources | None = None) -> SwapReport | None:
        """Local swap after a resource drop: keep the best subset of held modules that fits (and,
        with module-sparse adaptation, the best trainable subset within the new memory).

        Returns:
            What changed, or ``None`` if the device holds no sub-model yet.

        Raises:
            BudgetTooSmallError: If not even the smallest subset of the held modules fits.
        """
        if changes is not None:
            self.set_resources(changes)
        if self.model is None or self.spec is None or self.costs is None:
            return None
        budget = self._budget()
        allows_empty = [l.allows_empty for l in self.skeleton.layers]
        importance = self.importance()
        new = shrink_submodel(self.costs, self.spec, importance, budget, allows_empty)
        before = self.costs.total(self.spec)
        if new != self.spec:
            self.model = narrow(self.model, self.skeleton.layers, self.spec.groups, new.groups)
            self.spec = new
            self.exchange.reset()
            if self.cfg.adaptation.recalibrate_norms:
                recalibrate_norms(self.model, self.stream.train_set().images)
        if self.trainable is not None:
            a = self.cfg.adaptation
            self.trainable = derive_trainable(self.costs, new, importance, self._memory(),
                                              max_memory=budget.max_train_memory, share=a.trainable_share,
                                              head_rows=self.trainable.head_rows)
        self._save()
        return SwapReport(device=self.name, spec=new, params_before=before["params"],
                          params_after=self.costs.total(new)["params"])

    def _budget(self) -> DeviceProfile:
        """This device's budget now, from the cost table it received (no cloud round trip)."""
        a = self.cfg.adaptation
        full = self.costs.total(SubModelSpec(model_id=self.spec.model_id,
                                             groups=[tuple(range(len(m))) for m in self.costs.modules]))
        return budget_from_resources(
            self.name, self.resources, full_params=full["params"], batch_size=a.batch_size,
            target_step_seconds=a.target_step_seconds, max_transfer_seconds=a.max_transfer_seconds,
            sparse=a.trainable == "budgeted",
        )

    def cache_headroom(self) -> float | None:
        """Training memory (bytes) the device's plan leaves free under its limit, which module-sparse
        training may fill with the frozen stages' outputs (:func:`~eclm.pipelines.adaptation.finetune`);
        ``None`` when the device has no training-memory limit or trains densely."""
        if self.trainable is None or self.costs is None or self.spec is None:
            return None
        limit = self._budget().max_train_memory
        if limit is None:
            return None
        return max(0.0, limit - self._memory().total(self.costs, self.spec, self.trainable))

    def _memory(self) -> TrainingMemory:
        a = self.cfg.adaptation
        return training_memory_model(self.model, effective_batch(a.batch_size, a.replay_ratio, a.replay_capacity > 0))

