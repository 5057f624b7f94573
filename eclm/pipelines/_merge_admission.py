"""Admission of a round's updates to the validated merge: integrity and claim checks, then the
robust screen (the host is :class:`~eclm.pipelines.validated_merge.ValidatedMerge`; docs/security.md)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from eclm.modules.merge import ModuleUpdate
from eclm.pipelines.defences.changes import unit_changes
from eclm.pipelines.integrity import check_update
from eclm.pipelines.merge_workers import parallel_map

if TYPE_CHECKING:
    from eclm.pipelines.validated_merge import MergeReport


class MergeAdmissionMixin:
    """``_admit`` and ``_screen``; expects the :class:`ValidatedMerge` fields ``max_relative_norm``,
    ``max_samples``, ``claims``, ``known_classes``, ``screen``, ``reference``, ``own_scores``,
    ``class_rows``, ``same_upload``, ``workers`` and ``known_statistics``, and its ``_combine``."""

    def _admit(self, cloud_state, layers, updates, given_specs, expected_names, report: MergeReport) -> list[ModuleUpdate]:
        """Updates that pass the integrity and claim checks; the others land in ``report.rejected``."""
        valid: list[ModuleUpdate] = []
        seen: set[str] = set()
        checked = self._checked()
        for u in updates:
            if u.device_id in seen:
                report.rejected[f"{u.device_id} (duplicate upload)"] = "duplicate update from the same device; the first was kept"
                continue
            seen.add(u.device_id)
            given = given_specs.get(u.device_id)
            if given is None:
                report.rejected[u.device_id] = "unknown device (no sub-model was derived for it)"
                continue
            try:
                names = expected_names(u.spec)
            except ValueError as err:  # foreign model id, wrong layer count, module out of range
                report.rejected[u.device_id] = f"integrity: spec does not fit the cloud model: {err}"
                continue
            if checked.get(u.device_id) is u:  # passed these very checks on arrival, on the same weights
                valid.append(u)
                continue
            known = self.known_classes.get(u.device_id) if self.known_classes is not None else None
            try:
                problems = check_update(u, cloud_state, layers, given, names, max_relative_norm=self.max_relative_norm,
                                        max_samples=self.max_samples, claims=self.claims, known_classes=known)
            except Exception as err:  # a malformed update must not sink the others
                problems = [f"check failed: {err!r}"]
            if problems:
                report.rejected[u.device_id] = "integrity: " + "; ".join(problems[:3])
            else:
                valid.append(u)
        return valid

    def _screen(self, cloud_state, layers, valid: list[ModuleUpdate], report: MergeReport) -> list[ModuleUpdate]:
        """Updates the robust screen lets through; every device's statistics go into the report."""
        if self.screen is None or not valid:
            return valid
        changes, references, own = {}, {}, {}
        group = [u.device_id for u in valid if u.device_id in self.same_upload]
        screened = [u for u in valid if u.device_id not in group[1:]]  # a group is screened once, as group[0]
        checked = self._checked()
        todo = [u for u in screened if checked.get(u.device_id) is not u or u.device_id in group]
        computed = dict(zip((u.device_id for u in todo), parallel_map(
            lambda u: self._statistics(cloud_state, layers, u), todo, self.workers), strict=True))
        for u in screened:
            stats, err = computed[u.device_id] if u.device_id in computed else (self.known_statistics[u.device_id][0], None)
            if err is not None:  # this device alone is rejected
                report.rejected[u.device_id] = f"screen: could not be screened: {err!r}"
                continue
            changes[u.device_id] = stats[0]
            if stats[1] is not None:
                references[u.device_id] = stats[1]
            if stats[2] is not None:
                own[u.device_id] = stats[2]
        verdicts = self.screen(changes, references or None, own or None)
        if group and group[0] in verdicts:
            verdicts |= {d: verdicts[group[0]] for d in group[1:]}
        report.screen = {d: v.to_dict() for d, v in verdicts.items()}
        for d, v in verdicts.items():
            if not v.passed:
                report.rejected[d] = "screen: " + "; ".join(v.reasons)
        return [u for u in valid if u.device_id in verdicts and verdicts[u.device_id].passed]

    def _checked(self) -> dict[str, ModuleUpdate]:
        """Per device, the update object whose checks and statistics are in ``known_statistics``."""
        return {d: entry[1] for d, entry in (self.known_statistics or {}).items()}

    def statistics_of(self, cloud_state, layers, updates, given_specs, expected_names
                      ) -> dict[str, tuple[tuple, ModuleUpdate]]:
        """``(statistics, update)`` per device of the ``updates`` that pass the integrity and claim
        checks: the screen's per-update statistics (what :meth:`_screen` computes for them; an
        update whose statistics raise, or that belongs to a ``same_upload`` group, has none). A
        host that computes them before the merge (each upload on arrival) passes them back as
        ``known_statistics`` with the very same update objects: the merge skips those updates'
        checks and statistics (another object for the device is checked and screened as usual)."""
        if self.screen is None:
            return {}
        refused = SimpleNamespace(rejected={})  # the merge itself reports why
        valid = [u for u in self._admit(cloud_state, layers, updates, given_specs, expected_names, refused)
                 if u.device_id not in self.same_upload]
        results = parallel_map(lambda u: self._statistics(cloud_state, layers, u), valid, self.workers)
        return {u.device_id: (stats, u) for u, (stats, err) in zip(valid, results, strict=True) if err is None}

    def _statistics(self, cloud_state, layers, u: ModuleUpdate) -> tuple[tuple | None, Exception | None]:
        """``((changes, reference changes or None, own-class scores or None), None)`` of one update for
        the screen, or ``(None, the exception)`` if computing them raised (run on a merge worker)."""
        try:
            changes = unit_changes(u.state, u.carried, layers, cloud_state, class_rows=self.class_rows,
                                   classes=u.classes)
            reference = (unit_changes(self.reference(u), u.spec, layers, None, class_rows=self.class_rows,
                                      classes=u.classes) if self.reference is not None else None)
            behaviour = self.own_scores is not None and self.screen.checks_behaviour
            return (changes, reference, self._own_classes(cloud_state, layers, u) if behaviour else None), None
        except Exception as err:  # noqa: BLE001 - reported by the caller; the other updates go on
            return None, err

    def _own_classes(self, cloud_state, layers, update: ModuleUpdate):
        """``(before, after)`` per-sample scores on the device's classes for the behaviour checks;
        ``before`` (the cloud's sub-model) is ``None`` when only the accuracy check is on and
        ``after`` is too accurate for any drop beyond ``max_own_drop`` (the check cannot fire: one
        evaluation saved, the verdict unchanged)."""
        after = self.own_scores(self._combine(cloud_state, layers, [update]), update)  # the upload alone
        accurate = float(after.correct.float().mean()) >= 1 - (self.screen.max_own_drop or 0.0)
        if not after.correct.numel() or self.screen.max_own_loss_rise is None and accurate:
            return None, after
        return self.own_scores(cloud_state, update), after


__all__ = ["MergeAdmissionMixin"]
