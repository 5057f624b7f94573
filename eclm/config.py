"""The platform's one typed configuration (pydantic v2, ``extra="forbid"`` everywhere).

YAML in, the same object everywhere: the driver validates it, actors receive it as JSON and
validate it again, so a wrong key or value fails at load time with a message naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from eclm.data.config import DataConfig
from eclm.modules.offline_settings import OfflineSettings
from eclm.pipelines.triggers.config import TriggerConfig
from eclm.resources import NODE_LABEL, NODE_LABEL_VALUE_PATTERN
from eclm.serving.config import ServingConfig
from eclm.split.config import SplitConfig
from eclm.tracking.config import TrackingConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneConfig(_Strict):
    """The cloud model: a timm backbone decomposed into module layers."""

    name: str = Field("resnet18", description="timm model name of a supported family")
    kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"channels": [32, 64, 128, 256]},
        description="extra timm.create_model kwargs (num_classes and in_chans are set from the data)",
    )
    modules_per_layer: int = Field(4, ge=2, le=64, description="modules N per module layer")
    weights_path: Path | None = Field(None, description="local pretrained weights (.safetensors or .pt state dict)")
    selector_width: int = Field(16, ge=4, description="selector embedding CNN width")
    selector_dim: int = Field(64, ge=8, description="selector routing feature size")

    @model_validator(mode="after")
    def _no_download(self) -> BackboneConfig:
        if self.kwargs.get("pretrained"):
            raise ValueError("backbone.kwargs.pretrained would download weights; use backbone.weights_path")
        return self


class DeviceConfig(_Strict):
    """One edge device: its resources and how it is placed.

    Resources turn into a sub-model budget (see :mod:`eclm.pipelines.profiler`). Unset resources
    are measured on the node when ``measure`` is true, otherwise unconstrained.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="unique device name")
    memory_mb: float | None = Field(None, gt=0, description="memory available for training, MB")
    gflops: float | None = Field(None, gt=0, description="sustained compute, GFLOP/s")
    bandwidth_mbps: float | None = Field(None, gt=0, description="link bandwidth to the cloud, Mbit/s")
    latency_ms: float | None = Field(None, ge=0, description="one-way link latency to the cloud, ms (split learning's delay model)")
    params_fraction: float | None = Field(None, gt=0, le=1, description="cap sub-model params at this share of the cloud model")
    measure: bool = Field(False, description="measure unset resources on the node (memory, matmul GFLOP/s, link)")
    node: str | None = Field(
        None, pattern=NODE_LABEL_VALUE_PATTERN,
        description=f"pin to the cluster node labelled {NODE_LABEL}=<node> (docs/cluster.md); needs ray.address")
    mode: Literal["local", "split", "auto"] = Field("local", description="adaptation mode; auto = split if local training does not fit")
    gateway: str | None = Field(
        None, pattern=r"^https?://[A-Za-z0-9_.\[\]:-]+(:[0-9]+)?/?$",
        description="the device runs outside the Ray cluster and serves the device protocol at this URL "
        "(`eclm device-gateway`); its edge actor is a proxy that exchanges only JSON and safetensors bytes with it "
        "(docs/security.md); local adaptation only")

    @model_validator(mode="after")
    def _gateway_adapts_locally(self) -> DeviceConfig:
        if self.gateway is not None and self.mode != "local":
            raise ValueError(f"device {self.name}: a device behind a gateway adapts locally (mode: local), not {self.mode}")
        return self


class AdaptationConfig(_Strict):
    """Edge fine-tuning of sub-models (continual learning)."""

    epochs: int = Field(3, ge=0)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(16, ge=1)
    max_grad_norm: float | None = Field(
        None, gt=0, description="clip each training step's gradient (all trained parameters together) to this "
        "norm; None: no clipping. A batch whose loss spikes otherwise moves the weights far in one step "
        "(docs/method.md, 'Gradient spikes')")
    replay_capacity: int = Field(200, ge=0, description="replay buffer size (0 disables replay)")
    replay_ratio: float = Field(0.5, ge=0, le=1, description="replayed samples per fresh sample in a batch")
    recalibrate_norms: bool = Field(True, description="recompute BatchNorm statistics after module changes")
    restrict_to_local_classes: bool = Field(False, description="restrict the training softmax to the device's classes")
    target_step_seconds: float = Field(0.5, gt=0, description="compute budget: one training batch should take this long")
    max_transfer_seconds: float = Field(30.0, gt=0, description="bandwidth budget: shipping a sub-model should take this long")
    exchange: Literal["delta", "weights"] = Field(
        "delta", description="delta: devices upload this cycle's change and receive the cloud's change since the "
        "version they hold, keeping their local adaptation; weights: full sub-model weights both ways")
    delta_dtype: Literal["float32", "float16", "bfloat16", "int8"] = Field(
        "int8", description="wire codec of weight differences in the delta exchange (both ways): float16 halves "
        "their bytes at ~5e-4 relative error of the change; int8 quantises them per output channel (a quarter of "
        "the bytes; 1-D tensors as float16); float32 sends them exactly. A device feeds its rounding error into "
        "its next upload")
    first_delivery_dtype: Literal["float32", "float16", "int8"] = Field(
        "float16", description="wire type of a full sub-model (a first delivery or a changed spec); float16 halves "
        "it, int8 (per output channel, the delta codec) quarters its weight matrices; the device computes in float32 "
        "again (norm statistics and integer buffers travel exactly)")
    wire_compression: Literal["none", "deflate"] = Field(
        "deflate", description="lossless compression of what the exchange ships (downloads and uploads): deflate "
        "shuffles each tensor into byte planes and DEFLATEs them, so every figure stays bit-identical and only the "
        "bytes shrink (docs/method.md, 'Lossless wire compression'); none ships plain safetensors")
    download_min_change: float = Field(
        0.01, ge=0, lt=1, description="delta downloads carry a module only when the cloud's change of it since the "
        "version the device holds for it exceeds this fraction of its weights (relative L2 norm); smaller changes "
        "wait, and the device reports the module as lagging until they add up or the version it holds for it is "
        "about to be dropped (merge.keep_versions); 0 carries every change (docs/method.md)")
    trainable: Literal["all", "budgeted"] = Field(
        "budgeted", description="all: a device trains every parameter of its sub-model, which is derived to fit dense "
        "training in its memory; budgeted: module-sparse adaptation (docs/method.md): the sub-model is derived to "
        "fit the device's memory for its weights, and the device trains only its most important modules (and the "
        "parts outside modules when its memory allows backward through them) within trainable_share and its "
        "training-memory budget, plus the classifier rows of its classes")
    keep_local: bool = Field(
        True, description="a device adds a delta download to its own adapted weights (eclm: its adaptation "
        "survives); false: to the last version it received, so it then holds exactly the cloud's model (how "
        "FedAvg-style methods use compressed downloads)")
    trainable_share: float = Field(
        0.25, gt=0, le=1, description="budgeted: cap on trainable parameters as a share of the sub-model's "
        "parameters (the classifier rows aside)")
    train_head: Literal["own", "all"] = Field(
        "all", description="budgeted: the classifier rows a device trains: own (the rows of its classes; the others "
        "keep the cloud's values) or all (its head also learns which classes it never sees); either way it uploads "
        "only the rows of its classes")

    @model_validator(mode="after")
    def _sparse_needs_deltas(self) -> AdaptationConfig:
        if self.trainable == "budgeted" and self.exchange != "delta":
            raise ValueError("trainable: budgeted uploads only what a device trained, which needs exchange: delta")
        return self


class DriftDetectionConfig(_Strict):
    """Drift scoring on each device's incoming data."""

    accuracy_drop: float = Field(0.1, gt=0, le=1, description="accuracy drop that scores 1.0")
    shift_scale: float = Field(0.05, gt=0, description="importance shift (total variation) that scores 1.0")
    threshold: float = Field(0.5, ge=0, description="drift score above which a drift trigger fires")


class ScreenConfig(_Strict):
    """The robust screen run on a round's updates before aggregation (docs/security.md).

    Thresholds are set from the measured spread of honest updates on the embedded digits setting
    (docs/security.md lists the false-reject and detection rates they give).
    """

    enabled: bool = Field(True, description="screen every round's updates before they are aggregated")
    norm_multiplier: float = Field(
        4.0, gt=1, description="reject an update whose change norm is more than this x, or less than 1/this x, the "
        "median norm of the other devices holding the same modules (the lower side: see min_reference_norm_ratio)")
    min_reference_norm_ratio: float | None = Field(
        0.5, gt=0, description="an update below 1/norm_multiplier of the round's typical norm is rejected only if its "
        "change norm is also below this x that of the cloud's reference update (the same sub-model fine-tuned on "
        "proxy samples of the device's classes; needs trust); None: the round-relative bound decides alone")
    min_centre_cosine: float = Field(
        -0.3, ge=-1, le=1, description="reject an update whose cosine with the coordinate-wise median of the other "
        "devices' changes (same modules) is not above this")
    trust: bool = Field(True, description="compute the cloud's reference update per device on its proxy data (FLTrust) "
                        "and check the update's cosine with it")
    min_trust_cosine: float = Field(-0.3, ge=-1, le=1, description="minimum cosine with the reference update (body)")
    min_head_trust_cosine: float = Field(
        -0.5, ge=-1, le=1, description="minimum cosine with the reference update over the classifier rows of the "
        "device's classes")
    reference_steps: int = Field(4, ge=1, description="batches of the reference fine-tune (devices' lr and batch size)")
    max_own_drop: float | None = Field(
        0.3, ge=0, le=1, description="reject an update that makes the device's sub-model lose more than this accuracy on "
        "the cloud's proxy samples of the device's own classes (under its environment), significantly at merge.alpha "
        "(McNemar); None: no accuracy check")
    max_own_loss_rise: float | None = Field(
        0.05, ge=0, description="reject an update that raises the mean cross-entropy (nats) of the device's sub-model "
        "among its own classes on the same samples by more than this, significantly at merge.alpha (sign test), and on "
        "every one of its classes: it tells its own classes apart worse; None: no loss check")
    max_relative_stable_rank: float | None = Field(
        0.85, gt=0, description="reject an update whose changes are as spread over directions as random noise: the "
        "median over its modules of the change's stable rank over Gaussian noise's of the same shape (noise: about 1, "
        "honest updates measured 0.19-0.52); None: no noise check")
    quarantine_uploads: int = Field(
        2, ge=0, description="after the behaviour check rejects a device's update, refuse its next this many uploads "
        "too (its local weights keep what made that update harmful, e.g. wrong labels; 0: off)")
    fresh_after_rejection: bool = Field(
        True, description="send a device whose upload a check on its own classes (accuracy or loss) or the trust check "
        "(against the cloud's reference update) rejected, or the quarantine refused, the full weights of the current "
        "version at its next derivation, replacing its local weights (its next upload is then one cycle of training "
        "from the cloud's weights, as its first was)")
    min_cohort: int = Field(3, ge=3, description="devices that must hold a module before round-relative checks apply to it")
    duplicate_distance: float = Field(
        0.01, ge=0, lt=1, description="updates of different devices closer than this (relative distance) are identical: "
        "all of them are rejected")


class MergeConfig(_Strict):
    """The validated module merge."""

    aggregator: Literal["weighted", "median", "trimmed_mean", "krum", "multi_krum"] = Field(
        "weighted", description="how contributions to a module combine: importance x samples weighted average, "
        "coordinate median, trimmed mean, Krum or multi-Krum (per module, over the devices holding it)")
    weighting: Literal["importance", "importance_samples", "samples", "uniform"] = "importance_samples"
    trim_fraction: float = Field(0.2, ge=0, lt=0.5)
    krum_byzantine: int = Field(1, ge=0, description="Krum / multi-Krum: contributions that may be arbitrary (f)")
    krum_keep: int | None = Field(None, ge=1, description="multi-Krum: contributions averaged (None: all but krum_byzantine)")
    screen: ScreenConfig = Field(default_factory=ScreenConfig, description="the robust screen before aggregation")
    importance_tolerance: float = Field(
        0.01, gt=0, lt=1, description="a device's importance rows must each sum to 1 within this (they are means of "
        "softmax probabilities)")
    acceptance: Literal["paired", "threshold"] = Field(
        "paired", description="paired: reject a candidate only if McNemar's test on the same validation samples finds it "
        "significantly worse and the drop is not shown to be within tolerance; threshold: reject on an observed drop "
        "beyond tolerance")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="significance of the paired test overall; the per-device "
                         "tests share another alpha (Bonferroni)")
    max_drop: float | None = Field(0.03, ge=0, le=1, description="paired: an observed drop of cloud proxy-validation "
                                   "accuracy beyond this rejects even when not significant (None: off)")
    device_max_drop: float | None = Field(0.2, ge=0, le=1, description="paired: the same on a reporting device's classes")
    max_relative_norm: float = Field(0.5, gt=0, description="reject an update whose total change norm exceeds this x the norm of the cloud slices it replaces")
    tolerance: float = Field(0.02, ge=0, description="max allowed drop of cloud proxy-validation accuracy (paired: a "
                             "significant drop is still accepted when its upper confidence bound is within this)")
    device_tolerance: float = Field(0.05, ge=0, description="max allowed drop on a reporting device's classes (same rule)")
    min_updates: int = Field(1, ge=1)
    server_lr: float = Field(0.5, gt=0, le=1, description="step towards the merged weights: new = old + server_lr * (merged - old)")
    step_backoff: int = Field(3, ge=0, description="halvings of server_lr tried on a failing candidate before devices are excluded")
    search_budget: float = Field(
        4.0, ge=1, le=16, description="when the merge of all k updates fails, the group testing that isolates the "
        "harmful ones validates at most ceil(search_budget x log2 k) candidates; updates it has not cleared by then "
        "are excluded (docs/security.md)")
    keep_versions: int = Field(
        8, ge=1, description="recent cloud versions kept in memory to ship deltas against (one backbone copy each). "
        "A device holds the version before its cycle's merge, so one that returns keep_versions or more merges "
        "later gets its whole sub-model again (docs/method.md)")
    repair_epochs: int = Field(1, ge=0, description="epochs of proxy-data fine-tuning applied to a merged candidate before validation")
    repair_lr: float = Field(0.005, gt=0, description="learning rate of that repair fine-tuning")
    repair_environments: bool = Field(
        True, description="the repair fine-tuning sees each proxy image under a random one of the environments "
        "devices have reported (or clean): the cloud learns the environments its devices met")
    repair_scope: Literal["merged", "all"] = Field(
        "merged", description="merged: the repair trains only what this round's uploads carried (their modules, "
        "their classes' classifier rows), so a download still carries only what devices changed; all: every weight")
    head_by_class: bool = Field(True, description="merge classifier rows only over the devices that hold each class")
    merge_norm_statistics: bool = Field(False, description="average BatchNorm running statistics too; by default the cloud keeps its own and recalibrates them on proxy data")
    validate_environments: bool = Field(
        True, description="validate merge candidates on the proxy data clean and under every environment devices "
        "have reported (corruptions replayed on proxy images, norm statistics re-estimated per environment), and "
        "each device's sub-model under its own environment; false: clean proxy data only")
    workers: int | None = Field(
        None, ge=1, description="threads the merge's per-update work runs on (the screen's checks of each update and "
        "its per-unit medians, each candidate's per-device evaluations; decisions do not depend on it); None: the "
        "cores available to the cloud's process (a campaign's devices wait for the merge, so its cores are the "
        "merge's)")
    screen_on_arrival: bool = Field(
        True, description="screen each upload when it arrives, while the other devices still adapt (the robust "
        "screen's per-upload checks: its changes, the cloud's reference update, the behaviour check on its classes); "
        "the merge reuses those results when the cloud's weights and the upload are unchanged, so decisions are the "
        "same and only the merge's wait after the last upload shortens")
    calibration_samples: int | None = Field(
        128, ge=2, description="norm statistics under a replayed environment are re-estimated on a fixed random "
        "sample of at most this many proxy training images (of the classes evaluated), about what a device holds "
        "when it meets a new model; None: on all of them")


class RayConfig(_Strict):
    """How the platform reaches Ray."""

    address: str | None = Field(None, description="None = start a local Ray on loopback; 'auto' or ray://... to connect")
    num_cpus: float | None = Field(None, gt=0, description="CPUs for a local Ray (default: all)")
    cloud_cpus: float = Field(1.0, gt=0, description="CPUs reserved by the cloud actor")
    edge_cpus: float = Field(0.25, gt=0, description="CPUs reserved by each edge actor")
    threads_per_actor: int = Field(1, ge=1, description="torch threads per actor")
    call_timeout_s: float = Field(600.0, gt=0, description="timeout of one actor call")
    edge_pool_size: int | None = Field(
        None, ge=1, description="pooled mode: this many edge worker actors host all devices (None = one actor per device)"
    )
    pool_resident_devices: int | None = Field(
        64, ge=1, description="pooled mode: virtual devices a pool keeps in memory; the others rest in their "
        "device stores until called (None = keep every device in memory)")
    pool_nodes: list[Annotated[str, StringConstraints(pattern=NODE_LABEL_VALUE_PATTERN)]] | None = Field(
        None, min_length=1,
        description=f"pooled mode: spread the pools over the cluster nodes labelled {NODE_LABEL}=<node>, pool p on "
        "pool_nodes[p % len] (docs/scaling.md); None = wherever an edge slot is free")


class PlatformConfig(_Strict):
    """Everything a campaign needs."""

    name: str = Field("eclm-campaign", description="campaign (MLflow run) name")
    seed: int = Field(0, ge=0)
    workdir: Path = Field(Path("."), description="where checkpoints, journals and the default MLflow DB go")
    cycles: int = Field(3, ge=0, description="adaptation cycles for run()")
    steps_per_cycle: int = Field(1, ge=1, description="data drift steps each device takes between cycles")
    data: DataConfig = Field(default_factory=lambda: DataConfig(num_devices=4))
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    offline: OfflineSettings = Field(default_factory=OfflineSettings)
    devices: list[DeviceConfig] = Field(default_factory=list, description="edge devices; default: data.num_devices unconstrained devices")
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    drift: DriftDetectionConfig = Field(default_factory=DriftDetectionConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    trigger: TriggerConfig | None = Field(None, description="default trigger for schedule(); None = periodic every cycle")
    split: SplitConfig = Field(default_factory=SplitConfig, description="split learning for devices in mode split/auto")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="partitioned inference (Platform.serve / eclm serve)")

    @model_validator(mode="after")
    def _devices_match_data(self) -> PlatformConfig:
        if not self.devices:
            self.devices = [DeviceConfig(name=f"edge-{i}") for i in range(self.data.num_devices)]
        if len(self.devices) != self.data.num_devices:
            raise ValueError(f"devices lists {len(self.devices)} devices but data.num_devices is {self.data.num_devices}")
        if self.ray.edge_pool_size is not None and any(d.node for d in self.devices):
            raise ValueError("ray.edge_pool_size (pooled mode) cannot be combined with devices pinned to nodes")
        if self.ray.pool_nodes is not None and self.ray.edge_pool_size is None:
            raise ValueError("ray.pool_nodes needs pooled mode (ray.edge_pool_size)")
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError(f"device names must be unique, got {names}")
        return self

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.data.channels, self.data.image_size, self.data.image_size)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PlatformConfig:
        """Load and validate a YAML config.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ConfigError: If the YAML is invalid or a field is wrong (the message names it).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
        if raw is None:  # an empty file would otherwise run a full default campaign
            raise ConfigError(f"{path}: the file is empty; a campaign config needs at least its data and devices "
                              "(start from eclm/configs/demo.yaml)")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of settings (key: value) at the top level, "
                              f"got a {type(raw).__name__}")
        return cls.from_dict(raw, source=str(path))

    def resolve_paths(self, base: str | Path | None = None) -> PlatformConfig:
        """The same config with every file path absolute (``~`` expanded, relative ones joined to ``base``).

        Call it on the driver before the config reaches actors: a Ray worker resolves a relative
        path against the directory its node's ``ray start`` ran in, not the driver's (docs/cluster.md).

        Args:
            base: Directory relative paths are relative to (default: the current directory).

        Returns:
            A copy with absolute ``workdir``, ``backbone.weights_path``, ``data.path`` and ``data.root``
            (unset ones stay ``None``); idempotent.
        """
        root = Path.cwd() if base is None else Path(base).expanduser().absolute()

        def absolute(path: Path | None) -> Path | None:
            if path is None:
                return None
            path = Path(path).expanduser()
            return path if path.is_absolute() else root / path

        data = self.data.model_copy(update={"path": absolute(self.data.path), "root": absolute(self.data.root)})
        backbone = self.backbone.model_copy(update={"weights_path": absolute(self.backbone.weights_path)})
        return self.model_copy(update={"workdir": absolute(self.workdir), "data": data, "backbone": backbone})

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> PlatformConfig:
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            lines = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()]
            raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(lines)) from None


class ConfigError(ValueError):
    """A configuration that failed validation; the message lists every bad field."""
