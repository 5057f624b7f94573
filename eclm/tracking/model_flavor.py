"""The eclm MLflow model: a registered version that loads with ``mlflow.pyfunc`` and ``mlflow.pytorch``.

A model version travels as **architecture + weights**, never as a pickled module. Its MLflow model
directory (what ``models:/eclm-cloud/<version>`` resolves to) holds::

    MLmodel                       flavors, signature (float32 images -> float32 logits), example
    data/eclm/architecture.json   timm name and kwargs, modules per layer, input size, selector sizes
    data/eclm/model.safetensors   the weights, with the sub-model spec in the safetensors header
    pt2/model.pt2                 the same network as a ``torch.export`` archive (pytorch flavor)
    input_example.json, serving_input_example.json, requirements.txt, python_env.yaml, conda.yaml

* ``python_function`` flavor: its loader module is this module; :func:`_load_pyfunc` rebuilds the
  network from the architecture and the safetensors weights with eclm's own code
  (:func:`eclm.serving.build_model`). No code is unpickled.
* ``pytorch`` flavor: MLflow's pytorch flavor can only be loaded from a pickled module
  (``model.pth``, refused when ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is false) or from a
  ``torch.export`` archive (``model.pt2``: a graph in JSON plus raw tensor bytes, which MLflow
  checks to be pickle-free before loading). eclm writes the archive, so ``mlflow.pytorch.load_model``
  returns a ``torch.fx.GraphModule`` that computes the same logits (inference only). The archive
  repeats the weights; :func:`load_model` returns the plain, trainable timm module instead.

See ``docs/tracking.md`` for how the tracker registers versions and moves the ``champion`` alias.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

#: Folder of the eclm files (under ``data/``, the pyfunc flavor's ``data``).
DATA_DIR = "eclm"
WEIGHTS_FILE = "model.safetensors"
ARCHITECTURE_FILE = "architecture.json"
#: Folder of the ``torch.export`` archive (the pytorch flavor's ``model_data``).
PT2_DIR = "pt2"
_ARCH_KEYS = ("arch", "modules_per_layer", "input_size", "selector_width", "selector_dim")
_REQUIREMENTS = ("torch", "timm", "safetensors", "numpy")


def check_architecture(architecture: Any) -> dict[str, Any]:
    """Check an architecture description (:meth:`eclm.serving.ModelSource.architecture`).

    Returns:
        A JSON round-tripped copy.

    Raises:
        TypeError: If it is not a mapping or not JSON-serialisable.
        ValueError: If a key is missing or ``input_size`` is not ``(C, H, W)``.
    """
    if not isinstance(architecture, Mapping):
        raise TypeError(f"architecture must be a mapping, got {type(architecture).__name__}")
    missing = [key for key in _ARCH_KEYS if key not in architecture]
    if missing:
        raise ValueError(f"architecture lacks {missing} (see eclm.serving.ModelSource.architecture)")
    copy = json.loads(json.dumps(dict(architecture)))
    size = copy["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(d, int) and d > 0 for d in size)):
        raise ValueError(f"architecture input_size must be (C, H, W) of positive ints, got {size!r}")
    return copy


def model_digest(weights: bytes, architecture: Mapping[str, Any]) -> str:
    """SHA-256 over the architecture (canonical JSON) and the weights: a version's identity."""
    digest = hashlib.sha256(json.dumps(architecture, sort_keys=True).encode("utf-8"))
    digest.update(weights)
    return digest.hexdigest()


def save_model_dir(
    path: Path, weights: bytes, architecture: Mapping[str, Any], *, pytorch_flavor: bool = True, module: Any = None
) -> str:
    """Write an MLflow model directory for one model version (see the module docstring).

    Args:
        path: Target folder; must not exist yet.
        weights: :func:`~eclm.modules.pack_state` bytes with the sub-model spec in the header.
        architecture: :func:`check_architecture`-valid description of the network.
        pytorch_flavor: Also write the ``torch.export`` archive for ``mlflow.pytorch.load_model``.
        module: The network already rebuilt from ``architecture`` + ``weights``, or ``None``.

    Returns:
        ``"pt2"`` when the pytorch flavor was written, otherwise why not (``"disabled"``, or the
        export error: some networks cannot be traced by ``torch.export``; the version then loads
        through ``mlflow.pyfunc`` and :func:`load_model` only).

    Raises:
        ValueError: If the weights do not match the architecture.
    """
    import mlflow.pyfunc
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from eclm.serving import build_model

    module = build_model(architecture, weights) if module is None else module
    channels, height, width = architecture["input_size"]
    generator = torch.Generator().manual_seed(0)
    # Multiples of 1/8 print as short JSON numbers, which keeps input_example.json small.
    batch = (torch.randn(2, channels, height, width, generator=generator) * 8).round() / 8
    with torch.no_grad():
        classes = module(batch).shape[-1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, height, width), "images")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes), "logits")]),
    )
    with tempfile.TemporaryDirectory(prefix="eclm-model-") as staging:
        data = Path(staging) / DATA_DIR
        data.mkdir()
        (data / WEIGHTS_FILE).write_bytes(weights)
        (data / ARCHITECTURE_FILE).write_text(json.dumps(architecture, indent=2, sort_keys=True))
        mlflow.pyfunc.save_model(
            str(path),
            loader_module=__name__,
            data_path=str(data),
            signature=signature,
            input_example=batch[:1].numpy(),
            pip_requirements=_pinned_requirements(),
        )
    return _add_pt2_flavor(path, module, batch) if pytorch_flavor else "disabled"


def _add_pt2_flavor(path: Path, module: Any, batch: Any) -> str:
    """Export ``module`` to ``<path>/pt2/model.pt2`` and declare MLflow's pytorch flavor for it."""
    import torch
    from mlflow.models import Model

    try:
        # A batch of two keeps the batch dimension dynamic (torch.export specialises size-1 dims).
        exported = torch.export.export(module, (batch,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as error:  # noqa: BLE001 - an untraceable network still gets the pyfunc flavor
        return f"unavailable: {type(error).__name__}: {error}"[:300]
    (path / PT2_DIR).mkdir()
    torch.export.save(exported, str(path / PT2_DIR / "model.pt2"))
    mlflow_model = Model.load(str(path / "MLmodel"))
    mlflow_model.add_flavor("pytorch", model_data=PT2_DIR, pytorch_version=str(torch.__version__), code=None)
    mlflow_model.save(str(path / "MLmodel"))
    return "pt2"


def _pinned_requirements() -> list[str]:
    pins = []
    for name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


class EclmPyfuncModel:
    """The pyfunc implementation: float32 images ``(N, C, H, W)`` in, float32 logits out.

    Args:
        module: The rebuilt network (eval mode).
    """

    def __init__(self, module: Any) -> None:
        self.module = module

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> np.ndarray:
        """Logits ``(N, classes)`` for a batch of images.

        Args:
            model_input: ``numpy`` array ``(N, C, H, W)``, float32 (MLflow checks the signature),
                or ``{"images": array}``.
            params: Unused.

        Raises:
            TypeError: If the input is not an array.
        """
        import torch

        if isinstance(model_input, Mapping) and set(model_input) == {"images"}:
            model_input = model_input["images"]  # MLflow hands named-tensor input over as a dict
        if not isinstance(model_input, np.ndarray):
            raise TypeError(f"eclm models take a float32 numpy array (N, C, H, W), got {type(model_input).__name__}")
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(model_input, np.float32))).numpy()

    def get_raw_model(self) -> Any:
        """The rebuilt ``torch.nn.Module`` (``PyFuncModel.get_raw_model()`` returns it)."""
        return self.module


def _load_pyfunc(data_path: str, model_config: Mapping[str, Any] | None = None) -> EclmPyfuncModel:
    """MLflow's pyfunc hook: rebuild the network from ``<data>/architecture.json`` + safetensors."""
    return EclmPyfuncModel(rebuild(Path(data_path)))


def rebuild(data_dir: Path) -> Any:
    """Rebuild the network stored in a model directory's ``data/eclm/`` folder (eval mode).

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If the weights do not match the architecture.
    """
    from eclm.serving import build_model

    architecture = json.loads((data_dir / ARCHITECTURE_FILE).read_text())
    return build_model(architecture, (data_dir / WEIGHTS_FILE).read_bytes())


def load_model(model_uri: str, tracking_uri: str | None = None) -> Any:
    """Load a registered eclm model as a plain, trainable timm ``nn.Module``.

    Works for every eclm version, also one registered without the pytorch flavor, and never
    unpickles anything: the network is rebuilt from architecture JSON and safetensors weights.

    Args:
        model_uri: ``models:/eclm-cloud/3``, ``models:/eclm-cloud@champion``, ``runs:/<id>/models/...``
            or a local model directory.
        tracking_uri: Tracking and registry URI to resolve ``models:/`` and ``runs:/`` against;
            ``None`` uses MLflow's current ones.

    Returns:
        The network in eval mode.
    """
    import mlflow.artifacts

    if tracking_uri is not None and model_uri.startswith("models:/"):
        # MLflow resolves models:/ against the process-wide registry URI only; resolve it here.
        model_uri = _version_source(model_uri[len("models:/"):], tracking_uri)
    with tempfile.TemporaryDirectory(prefix="eclm-load-") as target:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=target, tracking_uri=tracking_uri
        )
        return rebuild(Path(local) / "data" / DATA_DIR)


def _version_source(reference: str, registry_uri: str) -> str:
    """Artifact URI of ``<name>/<version>`` or ``<name>@<alias>`` in the registry at ``registry_uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    if "@" in reference:
        name, alias = reference.rsplit("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, version = reference.rsplit("/", 1)
    return client.get_model_version_download_uri(name, str(version))
