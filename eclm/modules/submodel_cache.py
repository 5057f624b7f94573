"""Sub-models of one backbone state, extracted once per spec.

Devices of one tier and similar data are derived the same spec (in the scale suite's 50-device
rounds: 3 distinct specs), and a merge or a derivation round used to materialise the same
sub-model once per device: :meth:`ModularModel.extract` copies and narrows the backbone,
about 10-16 ms on the quick model, and a 50-update merge made 400-450 such calls. A
:class:`SubModelCache` keeps what one backbone state gives per spec, so each spec is extracted
once; the results are identical to extracting every time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from torch import Tensor, nn

from eclm.modules.module_copy import copy_module
from eclm.modules.spec import SubModelSpec

if TYPE_CHECKING:  # modular.py keeps skeletons' structures in a SubModelCache
    from eclm.modules.modular import ModularModel


class SubModelCache:
    """Sub-models of ``model`` (or of a given backbone ``state``) by spec, least recently used first out.

    What :meth:`module` and :meth:`state_dict` return is shared by every caller of the same spec:
    callers must not modify it (or must restore what they change, as
    :func:`~eclm.pipelines.adaptation.norm_statistics_kept` does around a recalibration). Use
    :meth:`copy` for a sub-model to train.

    Args:
        model: The modular model to extract from.
        state: A backbone ``state_dict`` to extract from instead of the model's current weights;
            it must not change while the cache is used.
        size: Sub-models kept at once.
        max_bytes: Bytes of tensors kept at once (the most recent sub-model is always kept).
    """

    def __init__(self, model: ModularModel, state: dict[str, Tensor] | None = None, size: int = 64,
                 max_bytes: int = 256 * 2**20) -> None:
        if size < 1 or max_bytes < 0:
            raise ValueError(f"size must be at least 1 and max_bytes non-negative, got {size} and {max_bytes}")
        self.model, self.state, self.size, self.max_bytes = model, state, size, max_bytes
        self._modules: OrderedDict[SubModelSpec, tuple[nn.Module, int]] = OrderedDict()
        self._bytes = 0
        self.extractions = 0  # how many sub-models were actually materialised

    def module(self, spec: SubModelSpec) -> nn.Module:
        """The sub-model ``spec`` (shared; do not modify).

        Raises:
            ValueError: If ``spec`` does not fit the model (:meth:`ModularModel.check_spec`).
        """
        kept = self._modules.get(spec)
        if kept is not None:
            self._modules.move_to_end(spec)
            return kept[0]
        module = self.model.extract(spec, self.state)
        self.extractions += 1
        size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        self._modules[spec] = (module, size)
        self._bytes += size
        while len(self._modules) > 1 and (len(self._modules) > self.size or self._bytes > self.max_bytes):
            self._bytes -= self._modules.popitem(last=False)[1][1]
        return module

    def state_dict(self, spec: SubModelSpec) -> dict[str, Tensor]:
        """The sub-model's tensors (a new dict of shared tensors; do not modify them in place)."""
        return self.module(spec).state_dict()

    def names(self, spec: SubModelSpec) -> set[str]:
        """The sub-model's tensor names."""
        return set(self.module(spec).state_dict())

    def copy(self, spec: SubModelSpec) -> nn.Module:
        """A private copy of the sub-model (to train or modify)."""
        return copy_module(self.module(spec))


__all__ = ["SubModelCache"]
