"""Command line: ``eclm demo``, ``eclm run --config file.yaml``, ``eclm check-config file.yaml``,
``eclm serve --config file.yaml``, ``eclm ui --workdir DIR``, ``eclm replay-journal JOURNAL``.

Every command checks its config before Ray starts (:mod:`eclm.preflight`). A failure prints one
line, ``eclm: <what failed>: <ExceptionType>: <message>``, and exits non-zero (exit codes in
docs/api.md, "Command line"); ``--debug`` adds the traceback and the actors' remote tracebacks.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import textwrap
import threading
import traceback
from collections import Counter
from importlib import resources
from pathlib import Path

from eclm.config import ConfigError, PlatformConfig
from eclm.failures import one_line, root_cause_line

EXIT_FAILED = 1
"""The campaign ran but failed: an actor failed, or a device failed in every cycle it was in."""
EXIT_USAGE = 2
"""Nothing ran: bad arguments, a config that does not load or cannot run, no cluster to connect to."""


def demo_config() -> PlatformConfig:
    """The embedded demo's config (shipped inside the package)."""
    text = resources.files("eclm.configs").joinpath("demo.yaml").read_text()
    import yaml

    return PlatformConfig.from_dict(yaml.safe_load(text), source="demo.yaml")


def deliveries_note(deliveries: dict[str, str]) -> str:
    """`` (2 first, 1 delta)``: how many devices' packages carried what (``SubModelPackage.delivery``),
    most frequent first; empty without any."""
    counts = Counter(deliveries.values())
    return f" ({', '.join(f'{n} {kind}' for kind, n in counts.most_common())})" if counts else ""


def _fmt(v, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:5.1f}%" if pct else f"{v:,.0f}"


def _pts(v) -> str:
    """A difference of two accuracies as signed percentage points (``+5.2``)."""
    return "-" if v is None else f"{100 * v:+.1f}"


SUMMARY_GLOSSARY = (
    "params: parameters of the device's last sub-model; acc before/after: accuracy on the cycle's "
    "environment before and after the device's adaptation; gain pts: after - before, in percentage "
    "points; forget pts: accuracy lost on the previous environment by adapting to the new one, in "
    "points (negative: it improved); MB up/down: traffic over all cycles."
)


def run_campaign(cfg: PlatformConfig, cycles: int | None, out=None, resume: bool = False) -> int:
    """Pretrain (unless resuming), run cycles with a progress line per cycle, print a summary table.

    Returns:
        0, or :data:`EXIT_FAILED` if a device failed in every cycle it was scheduled for (see
        :func:`devices_failing_every_cycle`; the reason is printed to stderr).

    Raises:
        StageFailed: If starting the platform, the offline stage or a cycle raised.
    """
    from eclm.platform import Platform

    stage = _Stage("starting the platform")
    with stage, Platform(cfg, resume=resume) as p:
        print(f"eclm: cloud model {cfg.backbone.name} ({p.info.full_cost['params']:,.0f} params, "
              f"{len(p.info.layer_names)} module layers x {cfg.backbone.modules_per_layer} modules), "
              f"{len(p.names)} edge devices", file=out)
        if p.resumed_from is not None:
            print(f"eclm: resumed from round {p.resumed_from} (cloud version {p.state.version}, store {p.store.root})",
                  file=out, flush=True)
        else:
            if resume:
                print("eclm: nothing to resume; starting a new campaign", file=out, flush=True)
            print("eclm: offline stage on the cloud's proxy data ...", file=out, flush=True)
            stage.now("the offline stage")
            hist = p.pretrain()
            print(f"eclm: offline done, proxy val accuracy {100 * hist[-1].val_acc_dense:.1f}% "
                  f"after {len(hist)} epochs", file=out, flush=True)
        total = cfg.cycles if cycles is None else cycles
        for c in range(total):
            stage.now(f"cycle {c + 1}/{total}")
            ran = p.run(steps=1)
            if not ran:
                print(f"cycle {c + 1}/{total}: trigger decided nothing", file=out, flush=True)
                continue
            r = ran[-1]
            label = f"cycle {c + 1}/{total}" + (f" (round {r.round})" if r.round != c + 1 else "")
            print(f"{label}: device acc {_fmt(r.mean('acc_before'))} -> {_fmt(r.mean('acc_after'))}"
                  f" | merge {r.merge.decision} ({len(r.merge.accepted)} accepted)"
                  f" | cloud val {_fmt(r.cloud_val_acc)}, on {len(r.merge.environments)} seen environments "
                  f"{_fmt(r.merge.cloud_seen_acc)} | up {sum(r.bytes_up.values()) / 1e6:.2f} MB"
                  f" down {sum(r.bytes_down.values()) / 1e6:.2f} MB{deliveries_note(r.deliveries)}"
                  + (f" | failed {sorted(r.failures)}" if r.failures else ""), file=out, flush=True)
        _summary(p, out)
        print(f"\nMLflow run {p.tracker.run_id or '(journal only)'} in {p.tracker.tracking_uri}"
              f"\nJSONL journal: {p.tracker.journal_path}"
              f"\nOpen the UI with: eclm ui --workdir {Path(cfg.workdir).resolve()}", file=out)
        failing = devices_failing_every_cycle(p.history)
    for name, (count, reason) in failing.items():
        print(f"eclm: device {name!r} failed in all {count} cycle(s) it was scheduled for: {reason}", file=sys.stderr)
    return EXIT_FAILED if failing else 0


def devices_failing_every_cycle(history) -> dict[str, tuple[int, str]]:
    """Devices that were scheduled in at least one cycle and failed in every one of them.

    This is the campaign's failure rule: such a device never adapted, so ``eclm run`` exits with
    :data:`EXIT_FAILED`. A device that failed only in some cycles is reported per cycle
    (``failed [...]``) and in the summary, but the run counts as done.

    Args:
        history: Cycle results (``devices`` scheduled, ``failures`` by device, as text).

    Returns:
        ``{device: (cycles scheduled, root cause of its last failure)}``.
    """
    scheduled: dict[str, int] = {}
    failed: dict[str, list[str]] = {}
    for h in history:
        for name in h.devices:
            scheduled[name] = scheduled.get(name, 0) + 1
            if name in h.failures:
                failed.setdefault(name, []).append(h.failures[name])
    return {name: (n, root_cause_line(failed[name][-1])) for name, n in scheduled.items()
            if len(failed.get(name, [])) == n}


class StageFailed(Exception):
    """A campaign stage (``"the offline stage"``, ``"cycle 2/5"``, ...) raised ``cause``."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage} failed: {root_cause_line(cause)}")
        self.stage, self.cause = stage, cause


class _Stage:
    """Names the stage a campaign is in; an exception leaving it becomes :class:`StageFailed`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def now(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> _Stage:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and isinstance(exc, Exception) and not isinstance(exc, (ConfigError, ConnectionError, StageFailed)):
            raise StageFailed(self.name, exc) from exc


def device_summary(history, names) -> list[dict]:
    """Per device: means over the cycles it took part in (each measured on that cycle's environment).

    A device's environment changes between cycles, so its accuracy in the first and the last cycle
    are not comparable; the mean before/after adaptation and the mean gain are.

    Args:
        history: Cycle results (``device_metrics``, ``bytes_up``, ``bytes_down`` per device).
        names: Device names, in display order.

    Returns:
        One dict per device: ``device``, ``cycles``, ``params`` (last sub-model), ``acc_before``,
        ``acc_after``, ``gain``, ``forgetting`` (means; ``None`` without data), ``mb_up``, ``mb_down``.
    """
    rows = []
    for n in names:
        metrics = [h.device_metrics[n] for h in history if n in h.device_metrics]

        def mean(key: str, metrics: list = metrics) -> float | None:
            values = [getattr(m, key) for m in metrics if getattr(m, key) is not None]
            return sum(values) / len(values) if values else None

        before, after = mean("acc_before"), mean("acc_after")
        rows.append({
            "device": n, "cycles": len(metrics), "params": metrics[-1].params if metrics else None,
            "acc_before": before, "acc_after": after,
            "gain": None if before is None or after is None else after - before,
            "forgetting": mean("forgetting"),
            "mb_up": sum(h.bytes_up.get(n, 0) for h in history) / 1e6,
            "mb_down": sum(h.bytes_down.get(n, 0) for h in history) / 1e6,
        })
    return rows


def _summary(p, out) -> None:
    if not p.history:
        return
    print("\nSummary per device (means over its cycles, each on that cycle's environment)", file=out)
    header = (f"{'device':<12}{'params':>10}{'cycles':>8}{'acc before':>12}{'acc after':>11}"
              f"{'gain pts':>10}{'forget pts':>12}{'MB up':>8}{'MB down':>9}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in device_summary(p.history, p.names):
        if not r["cycles"]:
            print(f"{r['device']:<12}{'(no successful cycle)':>40}", file=out)
            continue
        print(f"{r['device']:<12}{r['params']:>10,.0f}{r['cycles']:>8}{_fmt(r['acc_before']):>12}"
              f"{_fmt(r['acc_after']):>11}{_pts(r['gain']):>10}{_pts(r['forgetting']):>12}"
              f"{r['mb_up']:>8.2f}{r['mb_down']:>9.2f}", file=out)
    print(textwrap.fill(SUMMARY_GLOSSARY, width=len(header)), file=out)
    decisions = [h.merge.decision for h in p.history]
    print(f"\nmerges: {decisions}; cloud val accuracy by cycle: "
          f"{[round(100 * h.cloud_val_acc, 1) if h.cloud_val_acc is not None else None for h in p.history]}; "
          "on the environments seen so far: "
          f"{[round(100 * h.merge.cloud_seen_acc, 1) if h.merge.cloud_seen_acc is not None else None for h in p.history]}",
          file=out)


def serve_model(cfg: PlatformConfig, serving, model: str = "cloud", requests: int = 64, pretrain: bool = False,
                cycles: int = 0, out=None) -> int:
    """Start the platform, deploy ``model`` across the serving nodes, serve random requests, report.

    Raises:
        ConfigError: If ``model`` is neither ``"cloud"`` nor a device, or ``requests`` < 1.
        StageFailed: If starting the platform, pretraining, a cycle or serving raised.
    """
    import torch

    from eclm.platform import Platform

    if requests < 1:
        raise ConfigError(f"--requests must be >= 1, got {requests}")
    check_serve_model(cfg, model)
    stage = _Stage("starting the platform")
    with stage, Platform(cfg) as p:
        if pretrain:
            stage.now("the offline stage")
            print("eclm serve: offline stage on the cloud's proxy data ...", file=out, flush=True)
            p.pretrain()
        for c in range(cycles):
            stage.now(f"cycle {c + 1}/{cycles}")
            p.run_cycle(reason="eclm serve --cycles")
        stage.now(f"serving {model}")
        with p.serve(model, config=serving) as d:
            print(f"eclm serve: {model} ({d.n_blocks} blocks) on nodes {d.config.node_cpu_shares} "
                  f"({d.config.placement}, {d.config.partitioner}/{d.config.objective}); "
                  f"plan {list(d.plan.boundaries)}", file=out)
            for st in d.plan.stages:
                print(f"  node {st.node} (share {d.config.node_cpu_shares[st.node]}): blocks {st.start}-{st.stop - 1}, "
                      f"predicted {1e3 * st.compute_time:.2f} ms compute + {1e3 * st.transfer_time:.2f} ms link",
                      file=out)
            x = torch.randn(requests, *cfg.input_size, generator=torch.Generator().manual_seed(cfg.seed))
            d.infer(x)
            s = d.stats()
        print(f"served {s['requests']} requests ({s['failed']} failed, {s['retried']} retried): "
              f"wall p50 {s['latency_ms']['p50']:.1f} ms p95 {s['latency_ms']['p95']:.1f} ms, "
              f"{s['throughput_rps']:.1f} req/s | emulated p50 {s['emulated_latency_ms']['p50']:.1f} ms, "
              f"{s['emulated_throughput_rps']:.1f} req/s | re-partitions {s['repartitions']}", file=out)
        print(f"MLflow run {p.tracker.run_id or '(journal only)'} in {p.tracker.tracking_uri} (serving/{d.name}/...)",
              file=out)
    return 0


def serve_device(cfg: PlatformConfig, device: str, host: str = "127.0.0.1", port: int = 8470, out=None) -> int:
    """Run device ``device`` of ``cfg`` in this process behind a device gateway until interrupted.

    The device keeps its store under ``<workdir>/gateway-devices/<device>`` and resumes from it.

    Raises:
        ConfigError: If the config has no device of that name.
    """
    from eclm.gateway import DeviceGateway
    from eclm.pipelines.edge_service import EdgeService

    names = [d.name for d in cfg.devices]
    if device not in names:
        raise ConfigError(f"--device {device!r} is not a device of this campaign (devices: {names})")
    service = EdgeService(cfg, names.index(device), 1, Path(cfg.workdir) / "gateway-devices" / device)
    gateway = DeviceGateway(service, host, port)
    print(f"eclm: device {device} serving the device protocol at {gateway.url} (Ctrl-C stops it)", file=out or sys.stderr,
          flush=True)
    try:
        gateway.serve_forever()
    finally:
        gateway.close()
    return 0


def check_serve_model(cfg: PlatformConfig, model: str) -> None:
    """Raise :class:`ConfigError` unless ``model`` is ``"cloud"`` or one of the campaign's devices."""
    names = [d.name for d in cfg.devices]
    if model != "cloud" and model not in names:
        raise ConfigError(f"--model {model!r} is neither 'cloud' nor a device of this campaign (devices: {names})")


def _count(minimum: int):
    """argparse type: an int >= ``minimum`` (a negative cycle count is a usage error, not a no-op)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks (also the actors' remote ones)")
    parser = argparse.ArgumentParser(prog="eclm", description="Edge-cloud continual learning on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", parents=[common], help="run the embedded demo on this machine")
    d.add_argument("--cycles", type=_count(0), default=None)
    d.add_argument("--workdir", type=Path, default=None)
    r = sub.add_parser("run", parents=[common], help="run a campaign from a YAML config")
    r.add_argument("--config", type=Path, required=True)
    r.add_argument("--address", default=None, help="Ray address ('auto' on a cluster head; default: RAY_ADDRESS, "
                   "else a new local Ray)")
    r.add_argument("--cycles", type=_count(0), default=None)
    r.add_argument("--resume", action="store_true",
                   help="continue the newest run of this campaign (same name and workdir) from its last commit")
    c = sub.add_parser("check-config", parents=[common], help="check a YAML config (before Ray starts) and print it")
    c.add_argument("config", type=Path)
    c.add_argument("--address", default=None, help="Ray address the campaign will use")
    v = sub.add_parser("serve", parents=[common], help="serve the cloud model or a device's sub-model across edge nodes")
    v.add_argument("--config", type=Path, required=True, help="platform YAML with an optional serving: section")
    v.add_argument("--model", default="cloud", help="'cloud' or a device name (needs --cycles >= 1)")
    v.add_argument("--requests", type=_count(1), default=64, help="random requests to serve")
    v.add_argument("--pretrain", action="store_true", help="run the offline stage before serving")
    v.add_argument("--cycles", type=_count(0), default=0, help="adaptation cycles before serving")
    v.add_argument("--address", default=None, help="Ray address ('auto' on a cluster head)")
    u = sub.add_parser("ui", parents=[common], help="serve the MLflow UI over a campaign's tracking store on 127.0.0.1")
    where = u.add_mutually_exclusive_group()
    where.add_argument("--workdir", type=Path, default=None, help="the campaign's workdir (default: .)")
    where.add_argument("--config", type=Path, default=None, help="the campaign's YAML (its tracking store)")
    u.add_argument("--port", type=_count(1), default=5000)
    g = sub.add_parser("device-gateway", parents=[common],
                       help="run one device of a campaign outside the Ray cluster, serving it over HTTP to its edge actor")
    g.add_argument("--config", type=Path, required=True, help="the campaign's YAML (the device's data, model and settings)")
    g.add_argument("--device", required=True, help="the device's name in the config")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (put TLS in front for a real network)")
    g.add_argument("--port", type=_count(0), default=8470)
    j = sub.add_parser("replay-journal", parents=[common], help="push a journal written during an MLflow outage into MLflow")
    j.add_argument("journal", type=Path)
    j.add_argument("--tracking-uri", default=None, help="default: the store the journal was written against")
    return parser


def _load(args) -> tuple[PlatformConfig, str]:
    """The command's config with the command line's overrides, paths resolved here on the driver."""
    if args.command == "demo":
        cfg, source = demo_config(), "demo.yaml"
        if args.workdir:
            cfg = cfg.model_copy(update={"workdir": args.workdir})
    else:
        cfg, source = PlatformConfig.from_yaml(args.config), str(args.config)
    if getattr(args, "address", None):
        cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": args.address})})
    return cfg.resolve_paths(), source


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0, :data:`EXIT_FAILED`, :data:`EXIT_USAGE`, 130).

    The config is loaded, its paths resolved here on the driver and checked (:mod:`eclm.preflight`)
    before Ray starts; any failure becomes one line on stderr (the traceback with ``--debug``).
    """
    args = _parser().parse_args(argv)  # a bad argument exits 2 with argparse's message
    if args.debug:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        logging.getLogger("eclm").setLevel(logging.DEBUG)
    else:  # MLflow's INFO lines (creating tables, validating an input example) are not the user's news
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        if args.command in ("ui", "replay-journal"):
            from eclm.tracking import commands

            if args.command == "ui":
                return commands.serve_ui(args.workdir, args.config, args.port)
            return commands.replay(args.journal, args.tracking_uri)
        if args.command == "device-gateway":
            return serve_device(PlatformConfig.from_yaml(args.config).resolve_paths(), args.device, args.host, args.port)
        if args.command in ("run", "demo", "serve"):  # a first line at once: the checks import torch
            print(f"eclm: checking {'the demo config' if args.command == 'demo' else args.config} ...",
                  file=sys.stderr, flush=True)
        from eclm.preflight import describe, preflight

        cfg, source = _load(args)
        if args.command == "serve":
            check_serve_model(cfg, args.model)
        report = preflight(cfg, source=source, address=cfg.ray.address or os.environ.get("RAY_ADDRESS") or None)
        if args.command == "check-config":
            print(PlatformConfig.from_yaml(args.config).model_dump_json(indent=2))
            for line in describe(report, cfg):
                print(f"eclm: {line}", file=sys.stderr)
            return 0
        for note in report.notes:
            print(f"eclm: note: {note}", file=sys.stderr)
        if args.command == "serve":
            return serve_model(cfg, cfg.serving, args.model, args.requests, args.pretrain, args.cycles)
        return run_campaign(cfg, args.cycles, resume=getattr(args, "resume", False))
    except (ConfigError, FileNotFoundError, ConnectionError) as err:
        return _fail(err, args.debug, EXIT_USAGE, str(err))
    except StageFailed as err:
        return _fail(err, args.debug, EXIT_FAILED, str(err))
    except KeyboardInterrupt as err:
        return _fail(err, args.debug, 130, "interrupted")
    except Exception as err:  # noqa: BLE001 - the CLI's last word: one line, the traceback only on request
        return _fail(err, args.debug, EXIT_FAILED, root_cause_line(err))


def _fail(err: BaseException, debug: bool, code: int, message: str) -> int:
    """Print ``eclm: <message>`` (a config's problem list keeps its lines) and return ``code``."""
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    text = message if "\n" in message and isinstance(err, ConfigError) else one_line(message, limit=2000)
    hint = "" if debug or code == EXIT_USAGE else " (--debug shows the traceback)"
    print(f"eclm: {text}{hint}", file=sys.stderr)
    return code


def console() -> None:
    """The ``eclm`` executable: :func:`main`, then a prompt exit with its code.

    When ``main`` returns, everything is written: the platform has closed its MLflow run (waiting
    for the background publisher) and stopped Ray, and every file it writes is closed per record.
    What would remain is the interpreter tearing down torch, timm and MLflow module by module,
    2-3 s on a 2-core machine in which nothing is saved. So the remaining threads are joined, the
    exit handlers run, the streams are flushed, and the process ends.
    """
    code = main()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what interpreter shutdown would run first (logging, Ray, MLflow hooks)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
