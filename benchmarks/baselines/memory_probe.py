"""Measured peak memory of one local adaptation run, per sub-model, in a separate process.

Method (Linux): one probe process (``python -m benchmarks.baselines.memory_probe``) imports torch
and builds the modular model once, then forks one child per sub-model. The child extracts the
sub-model, builds its local data and a filled replay buffer, and establishes the process's torch
baseline: torch's training machinery has run once on a tiny model (autograd engine, optimizer,
the first use of the convolution, norm and loss kernels) and the sub-model has run inference on
the local data in batches of the training batch size (what a device does before it adapts: it
evaluates the model it holds). Then it resets the kernel's peak-RSS mark
(``echo 5 > /proc/self/clear_refs``), runs ``eclm.pipelines.adaptation.finetune`` with the
benchmark's adaptation settings (module-sparse when the request names a trainable spec), and
reads the peak back (``VmHWM`` in ``/proc/self/status``). The reported figure is that peak minus
the RSS right before training: the memory training itself adds (gradients and optimizer state of
the trained parameters, kept activations, backward workspaces, allocator growth), measured by the
kernel rather than estimated. Forking keeps each measurement on a clean heap without paying the
interpreter and torch start-up per sub-model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def measure_adaptation_memory(request: dict, timeout: float = 600.0) -> list[dict]:
    """Run the probe process and return one measurement per requested sub-model.

    Args:
        request: ``{"arch": {"name", "kwargs"}, "modules_per_layer", "input_size": [C, H, W],
            "num_classes", "classes": [...], "samples", "epochs", "lr", "momentum", "batch_size",
            "replay_capacity", "replay_ratio", "specs": {key: groups or {"groups", "trainable",
            "cache_limit"}}}`` (``trainable``: a :class:`~eclm.modules.spec.TrainableSpec` as JSON,
            or ``None`` for dense training; ``cache_limit``: the memory the device's plan leaves
            free, which bounds the frozen stages' cached outputs as on the device).
        timeout: Seconds before the probe is abandoned.

    Returns:
        Per spec key (in request order) ``{"key", "params", "baseline_rss", "peak_rss",
        "adaptation_rss", "seconds_per_batch", "method", "sparse", "prefix_cached"}``;
        ``{"key", "error"}`` where a child failed.

    Raises:
        RuntimeError: If the probe process fails as a whole.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.baselines.memory_probe"], input=json.dumps(request), text=True,
        capture_output=True, timeout=timeout, env=env, cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _child(modular, request: dict, entry) -> dict:
    """Measure one sub-model (runs in the forked child)."""
    import torch

    from eclm.data import ReplayBuffer
    from eclm.modules import SubModelSpec
    from eclm.modules.sparse_training import SparsePlan
    from eclm.modules.spec import TrainableSpec
    from eclm.pipelines.adaptation import finetune

    groups, trainable, cache_limit = ((entry["groups"], entry.get("trainable"), entry.get("cache_limit"))
                                      if isinstance(entry, dict) else (entry, None, None))
    spec = SubModelSpec(model_id=modular.model_id, groups=groups)
    model = modular.extract(spec)
    gen = torch.Generator().manual_seed(0)
    n, classes = request["samples"], request["classes"]
    x = torch.rand(n, *request["input_size"], generator=gen)
    y = torch.as_tensor(classes)[torch.randint(len(classes), (n,), generator=gen)]
    replay = None
    if request["replay_capacity"]:
        replay = ReplayBuffer(request["replay_capacity"], seed=0)
        replay.add(x, y)  # steady state: every batch carries its replayed share
    _torch_baseline(model, x, request["batch_size"])
    method = "VmHWM reset" if _reset_peak() else "ru_maxrss (peak not resettable)"
    before = _status_kib("VmRSS")
    sparse = SparsePlan(modular.layers, spec, TrainableSpec.model_validate(trainable)) if trainable else None
    stats = finetune(model, x, y, epochs=request["epochs"], lr=request["lr"], batch_size=request["batch_size"],
                     momentum=request["momentum"], replay=replay, replay_ratio=request["replay_ratio"],
                     local_classes=classes, sparse=sparse, cache_limit=cache_limit)
    peak = _status_kib("VmHWM")
    if peak is None or before is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        before = before or 0
    return {"params": sum(p.numel() for p in model.parameters()), "baseline_rss": before * 1024,
            "peak_rss": peak * 1024, "adaptation_rss": max(0, peak - before) * 1024,
            "seconds_per_batch": stats.seconds_per_batch, "method": method, "sparse": sparse is not None,
            "prefix_cached": stats.prefix_cached}


def _torch_baseline(model, x, batch_size: int) -> None:
    """The process's torch baseline (module docstring): training machinery started on a tiny model,
    and the sub-model's inference on the local data."""
    import torch
    from torch import nn

    tiny = nn.Sequential(nn.Conv2d(x.shape[1], 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        nn.functional.cross_entropy(tiny(torch.rand(2, *x.shape[1:])), torch.tensor([0, 1])).backward()
        opt.step()
    with torch.no_grad():
        model.eval()
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])


def _main() -> None:
    request = json.loads(sys.stdin.read())
    import torch

    torch.set_num_threads(1)  # forking after a multi-threaded OpenMP region is unsafe; 1 thread like the jobs
    from eclm.modules import modularize

    arch = request["arch"]
    modular = modularize(arch["name"], modules_per_layer=request["modules_per_layer"],
                         input_size=tuple(request["input_size"]), **arch["kwargs"])
    results = []
    for key, groups in request["specs"].items():
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(read_fd)
            try:
                out = _child(modular, request, groups)
            except Exception as err:  # noqa: BLE001 - reported to the parent, not raised
                out = {"error": f"{type(err).__name__}: {err}"}
            with os.fdopen(write_fd, "w") as w:
                w.write(json.dumps(out))
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd) as r:
            text = r.read()
        os.waitpid(pid, 0)
        results.append({"key": key, **(json.loads(text) if text else {"error": "child produced no output"})})
    print(json.dumps(results))


if __name__ == "__main__":
    _main()
