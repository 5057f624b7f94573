"""NA: the sub-model the cloud first derives for a device, never updated afterwards."""

from __future__ import annotations

from benchmarks.baselines.local_adaptation import DeriveOnce


class NoAdaptation(DeriveOnce):
    """No adaptation: derive once (eclm's derivation from the pretrained cloud model), then keep.

    Installing goes through ``EdgeService.install``, so the sub-model's BatchNorm statistics are
    re-estimated once on the device's first local data, as for every other method; after that
    nothing changes (the coordinator calls ``EdgeService.evaluate`` instead of ``adapt``), and
    nothing is uploaded.
    """

    name = "na"
    adapts = False
