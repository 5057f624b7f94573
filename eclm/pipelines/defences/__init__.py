"""Defences of the validated merge against poisoned and faulty devices (docs/security.md).

* :mod:`~eclm.pipelines.defences.claims`: bounds on what a device claims (importance, classes,
  sample count, metrics).
* :mod:`~eclm.pipelines.defences.changes`: an update as its change to the cloud, per merge unit.
* :mod:`~eclm.pipelines.defences.screen`: the robust screen (round-relative norm bound, direction
  against the robust centre, trust against the cloud's reference update, identical updates).
* :mod:`~eclm.pipelines.defences.reference`: the cloud's reference update on its proxy data.
* :mod:`~eclm.pipelines.defences.quarantine`: devices caught training on wrong labels are refused
  for their next uploads.
"""

from eclm.pipelines.defences.changes import Unit, unit_changes
from eclm.pipelines.defences.claims import ClaimBounds, check_claims
from eclm.pipelines.defences.quarantine import Quarantine
from eclm.pipelines.defences.reference import reference_update
from eclm.pipelines.defences.screen import DeviceScreen, RobustScreen, leave_one_out_median

__all__ = ["ClaimBounds", "DeviceScreen", "Quarantine", "RobustScreen", "Unit", "check_claims", "leave_one_out_median",
           "reference_update", "unit_changes"]
