"""The model-registry side of :class:`~eclm.tracking.CampaignTracker`: cloud versions and device sub-models.

A model is staged beside the journal (safetensors weights and architecture JSON), journalled,
then published as an MLflow model (:mod:`eclm.tracking.model_flavor`) unless the registry holds
the same digest already; the staged files are dropped once MLflow holds them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from eclm.tracking._checks import (
    check_alias,
    check_safetensors,
    check_step,
    check_tags,
    check_version_tag,
)
from eclm.tracking._mlflow_run import version_tags
from eclm.tracking.model_flavor import ARCHITECTURE_FILE, WEIGHTS_FILE, check_architecture, model_digest

#: The registry alias that follows the latest accepted cloud version.
CHAMPION = "champion"


class ModelLog:
    """Model logging for :class:`~eclm.tracking.CampaignTracker`, which provides the journal
    (``_require_open``), the fail-soft MLflow call (``_call``, ``_run``), ``_stored``,
    ``_checked_values``, ``config`` and the set of folders logged in this run (``_model_folders``).
    """

    def log_model_version(
        self,
        weights: bytes,
        architecture: Mapping[str, Any],
        metrics: Mapping[str, Any],
        version_tag: str,
        step: int | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
        alias: str | None = CHAMPION,
    ) -> str | None:
        """Register a cloud model version as an MLflow model and point ``alias`` at it.

        The version is stored at ``models/cloud/<version_tag>`` of the run (see
        :mod:`eclm.tracking.model_flavor` for the layout) and loads with
        ``mlflow.pyfunc.load_model("models:/<name>/<version>")``, ``mlflow.pytorch.load_model`` (when
        ``pytorch_flavor`` is on) and :func:`~eclm.tracking.load_model`. Its tags: ``eclm.sha256``,
        ``eclm.version_tag``, ``eclm.pytorch_flavor``, ``metric.<name>`` and ``tags``.

        If the registry already holds this architecture with these weights under the same name
        (the pretrained version 0 of a campaign run again, a replayed journal), that version is
        reused: nothing is uploaded or registered and only ``alias`` moves.

        Args:
            weights: :func:`~eclm.modules.pack_state` bytes of the cloud backbone with its full spec.
            architecture: :meth:`eclm.serving.ModelSource.architecture` of the cloud model:
                ``arch`` (timm name and kwargs), ``modules_per_layer``, ``input_size``,
                ``selector_width``, ``selector_dim``.
            metrics: ``{name: value}`` describing this version (e.g. validation accuracy).
            version_tag: Name of the version within the run, ``[A-Za-z0-9_.-]``, unique per run.
            step: Round that produced the version, or ``None``.
            tags: Extra model version tags (e.g. ``{"eclm.cloud_version": 3}``).
            alias: Registry alias to point at this version; ``None`` leaves aliases alone.

        Returns:
            The registry version number (``"1"``, ``"2"``, ...), or ``None`` when MLflow is
            unavailable (the files then stay in the journal folder for a replay) or the tracker
            publishes in the background (the number is journalled once it is known).

        Raises:
            RuntimeError: If the run is not open.
            TypeError, ValueError: If an argument is malformed, the weights do not match the
                architecture, or ``version_tag`` was already used.
        """
        if not isinstance(architecture, Mapping):
            raise TypeError(f"architecture must be the mapping of ModelSource.architecture(), not "
                            f"{type(architecture).__name__} (the spec-JSON form of this call was removed)")
        folder = f"models/cloud/{check_version_tag(version_tag)}"
        labels = {"version_tag": version_tag}
        return self._log_model(
            self.config.registered_model_name, folder, weights, architecture, metrics, step, tags, alias, labels
        )

    def log_device_model(
        self,
        device: str,
        weights: bytes,
        architecture: Mapping[str, Any],
        version_tag: str,
        metrics: Mapping[str, Any] | None = None,
        step: int | None = None,
    ) -> str | None:
        """Register a device's sub-model as an MLflow model, loadable like a cloud version.

        Stored at ``models/devices/<device>/<version_tag>`` and registered as
        :meth:`device_model_name` (``<registered_model_name>.<device>``); no alias is set.

        Args:
            device: Device name (``[A-Za-z0-9_.-]``).
            weights: :func:`~eclm.modules.pack_state` bytes of the sub-model with its spec.
            architecture: The cloud model's architecture (the spec in ``weights`` selects the sub-model).
            version_tag: Name of this snapshot within the run, unique per device.
            metrics: ``{name: value}`` describing the snapshot, or ``None``.
            step: Round the snapshot was taken in, or ``None``.

        Returns:
            The registry version number, or ``None`` when MLflow is unavailable or the tracker
            publishes in the background.

        Raises:
            RuntimeError: If the run is not open.
            TypeError, ValueError: As :meth:`log_model_version`.
        """
        folder = f"models/devices/{check_version_tag(device)}/{check_version_tag(version_tag)}"
        labels = {"device": device, "version_tag": version_tag}
        return self._log_model(
            self.device_model_name(device), folder, weights, architecture, metrics or {}, step, None, None, labels
        )

    def device_model_name(self, device: str) -> str:
        """Registered model name of a device's sub-models: ``<registered_model_name>.<device>``."""
        return f"{self.config.registered_model_name}.{device}"

    @property
    def champion_uri(self) -> str:
        """``models:/<registered_model_name>@champion``: the latest accepted cloud version."""
        return f"models:/{self.config.registered_model_name}@{CHAMPION}"

    # -- machinery -------------------------------------------------------------------------------

    def _log_model(
        self,
        model_name: str,
        folder: str,
        weights: bytes,
        architecture: Mapping[str, Any],
        metrics: Mapping[str, Any],
        step: int | None,
        tags: Mapping[str, Any] | None,
        alias: str | None,
        labels: Mapping[str, str],
    ) -> str | None:
        """Stage, journal and publish one model (see :meth:`log_model_version`)."""
        from eclm.serving import build_model

        journal = self._require_open("log model")
        blob = check_safetensors(weights)
        architecture = check_architecture(architecture)
        values = self._checked_values(metrics)
        extra_tags = check_tags(tags)
        if step is not None:
            check_step(step)
        if alias is not None:
            check_alias(alias)
        if folder in self._model_folders:
            raise ValueError(f"{folder!r} was already logged in this run (version tags must be unique)")
        module = build_model(architecture, blob)  # a mismatch is the caller's bug: raise it here
        self._model_folders.add(folder)
        digest = model_digest(blob, architecture)
        files = [
            journal.write_artifact(f"{folder}/{WEIGHTS_FILE}", blob),
            journal.write_artifact(f"{folder}/{ARCHITECTURE_FILE}", json.dumps(architecture).encode("utf-8")),
        ]
        data = {"registered_model": model_name, "folder": folder, **labels, "sha256": digest, "alias": alias,
                "metrics": values, "tags": extra_tags,
                "files": {"weights": journal.relative(files[0]), "architecture": journal.relative(files[1])}}
        record = journal.append("model_version", data, step)
        tags = version_tags(digest, labels, values, extra_tags)
        published = self._call(
            f"registration of {folder}",
            lambda: self._run().publish_model(model_name, folder, blob, architecture, tags, alias,
                                              pytorch_flavor=self.config.pytorch_flavor, module=module),
            then=lambda done: self._stored(record, files, uri=f"models:/{model_name}/{done[0]}",
                                           registered_version=done[0], reused=done[1]),
        )
        return None if published is None else published[0]
