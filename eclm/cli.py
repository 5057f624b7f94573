"""Command line: ``eclm demo``, ``eclm run --config file.yaml``, ``eclm check-config file.yaml``,
``eclm serve --config file.yaml``."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from eclm.config import ConfigError, PlatformConfig


def demo_config() -> PlatformConfig:
    """The embedded demo's config (shipped inside the package)."""
    text = resources.files("eclm.configs").joinpath("demo.yaml").read_text()
    import yaml

    return PlatformConfig.from_dict(yaml.safe_load(text), source="demo.yaml")


def _fmt(v, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:5.1f}%" if pct else f"{v:,.0f}"


def run_campaign(cfg: PlatformConfig, cycles: int | None, out=None, resume: bool = False) -> int:
    """Pretrain (unless resuming), run cycles with a progress line per cycle, print a summary table."""
    from eclm.platform import Platform

    with Platform(cfg, resume=resume) as p:
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
            hist = p.pretrain()
            print(f"eclm: offline done, proxy val accuracy {100 * hist[-1].val_acc_dense:.1f}% "
                  f"after {len(hist)} epochs", file=out, flush=True)
        total = cfg.cycles if cycles is None else cycles
        for c in range(total):
            ran = p.run(steps=1)
            if not ran:
                print(f"cycle {c + 1}/{total}: trigger decided nothing", file=out, flush=True)
                continue
            r = ran[-1]
            print(f"cycle {r.round}: device acc {_fmt(r.mean('acc_before'))} -> {_fmt(r.mean('acc_after'))}"
                  f" | merge {r.merge.decision} ({len(r.merge.accepted)} accepted)"
                  f" | cloud val {_fmt(r.cloud_val_acc)}, on {len(r.merge.environments)} seen environments "
                  f"{_fmt(r.merge.cloud_seen_acc)} | up {sum(r.bytes_up.values()) / 1e6:.2f} MB"
                  f" down {sum(r.bytes_down.values()) / 1e6:.2f} MB"
                  + (f" | failed {sorted(r.failures)}" if r.failures else ""), file=out, flush=True)
        _summary(p, out)
        print(f"\nMLflow run {p.tracker.run_id or '(journal only)'} in {p.tracker.tracking_uri}"
              f"\nJSONL journal: {p.tracker.journal_path}"
              "\nOpen the UI with: make mlflow-ui   (then browse http://127.0.0.1:5000)", file=out)
    return 0


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
    header = (f"{'device':<12}{'params':>10}{'cycles':>8}{'acc before':>12}{'acc after':>11}{'gain':>8}"
              f"{'forgetting':>12}{'MB up':>8}{'MB down':>9}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in device_summary(p.history, p.names):
        if not r["cycles"]:
            print(f"{r['device']:<12}{'(no successful cycle)':>40}", file=out)
            continue
        print(f"{r['device']:<12}{r['params']:>10,.0f}{r['cycles']:>8}{_fmt(r['acc_before']):>12}"
              f"{_fmt(r['acc_after']):>11}{_fmt(r['gain']):>8}{_fmt(r['forgetting']):>12}"
              f"{r['mb_up']:>8.2f}{r['mb_down']:>9.2f}", file=out)
    decisions = [h.merge.decision for h in p.history]
    print(f"\nmerges: {decisions}; cloud val accuracy by cycle: "
          f"{[round(100 * h.cloud_val_acc, 1) if h.cloud_val_acc is not None else None for h in p.history]}; "
          "on the environments seen so far: "
          f"{[round(100 * h.merge.cloud_seen_acc, 1) if h.merge.cloud_seen_acc is not None else None for h in p.history]}",
          file=out)


def load_serve_config(path: Path):
    """A platform YAML and its ``serving:`` section (a ``ServingConfig``) for ``eclm serve``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ConfigError: If the YAML or a field (platform or serving) is invalid; the message names it.
    """
    cfg = PlatformConfig.from_yaml(path)
    return cfg, cfg.serving


def serve_model(cfg: PlatformConfig, serving, model: str = "cloud", requests: int = 64, pretrain: bool = False,
                cycles: int = 0, out=None) -> int:
    """Start the platform, deploy ``model`` across the serving nodes, serve random requests, report."""
    import torch

    from eclm.platform import Platform

    if requests < 1:
        raise ConfigError(f"--requests must be >= 1, got {requests}")
    with Platform(cfg) as p:
        if pretrain:
            print("eclm serve: offline stage on the cloud's proxy data ...", file=out, flush=True)
            p.pretrain()
        for _ in range(cycles):
            p.run_cycle(reason="eclm serve --cycles")
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

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eclm", description="Edge-cloud continual learning on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the embedded demo on this machine")
    d.add_argument("--cycles", type=int, default=None)
    d.add_argument("--workdir", type=Path, default=None)
    r = sub.add_parser("run", help="run a campaign from a YAML config")
    r.add_argument("--config", type=Path, required=True)
    r.add_argument("--address", default=None, help="Ray address ('auto' on a cluster head)")
    r.add_argument("--cycles", type=int, default=None)
    r.add_argument("--resume", action="store_true",
                   help="continue the newest run of this campaign (same name and workdir) from its last commit")
    c = sub.add_parser("check-config", help="validate a YAML config and print it")
    c.add_argument("config", type=Path)
    v = sub.add_parser("serve", help="serve the cloud model or a device's sub-model across edge nodes")
    v.add_argument("--config", type=Path, required=True, help="platform YAML with an optional serving: section")
    v.add_argument("--model", default="cloud", help="'cloud' or a device name (needs --cycles >= 1)")
    v.add_argument("--requests", type=int, default=64, help="random requests to serve")
    v.add_argument("--pretrain", action="store_true", help="run the offline stage before serving")
    v.add_argument("--cycles", type=int, default=0, help="adaptation cycles before serving")
    v.add_argument("--address", default=None, help="Ray address ('auto' on a cluster head)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            cfg = demo_config()
            if args.workdir:
                cfg = cfg.model_copy(update={"workdir": args.workdir})
            return run_campaign(cfg, args.cycles)
        if args.command == "serve":
            cfg, serving = load_serve_config(args.config)
            if args.address:
                cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": args.address})})
            return serve_model(cfg, serving, args.model, args.requests, args.pretrain, args.cycles)
        cfg = PlatformConfig.from_yaml(args.config)
        if args.command == "check-config":
            print(cfg.model_dump_json(indent=2))
            return 0
        if args.address:
            cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": args.address})})
        return run_campaign(cfg, args.cycles, resume=args.resume)
    except (ConfigError, FileNotFoundError, ConnectionError) as err:
        print(f"eclm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
