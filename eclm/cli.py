"""Command line: ``eclm demo``, ``eclm run --config file.yaml``, ``eclm check-config file.yaml``."""

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


def run_campaign(cfg: PlatformConfig, cycles: int | None, out=sys.stdout) -> int:
    """Pretrain, run cycles with a progress line per cycle, print a summary table."""
    from eclm.platform import Platform

    with Platform(cfg) as p:
        print(f"eclm: cloud model {cfg.backbone.name} ({p.info['full_cost']['params']:,.0f} params, "
              f"{len(p.info['layer_names'])} module layers x {cfg.backbone.modules_per_layer} modules), "
              f"{len(p.names)} edge devices", file=out)
        print("eclm: offline stage on the cloud's proxy data ...", file=out, flush=True)
        hist = p.pretrain()
        print(f"eclm: offline done, proxy val accuracy {100 * hist[-1]['val_acc_dense']:.1f}% "
              f"after {len(hist)} epochs", file=out, flush=True)
        total = cfg.cycles if cycles is None else cycles
        for c in range(total):
            ran = p.run(cycles=1)
            if not ran:
                print(f"cycle {c + 1}/{total}: trigger decided nothing", file=out, flush=True)
                continue
            r = ran[-1]
            print(f"cycle {r.round}/{total}: device acc {_fmt(r.mean('acc_before'))} -> {_fmt(r.mean('acc_after'))}"
                  f" | merge {r.merge.get('decision')} ({len(r.merge.get('accepted', []))} accepted)"
                  f" | cloud val {_fmt(r.cloud_val_acc)} | up {sum(r.bytes_up.values()) / 1e6:.2f} MB"
                  f" down {sum(r.bytes_down.values()) / 1e6:.2f} MB"
                  + (f" | failed {sorted(r.failures)}" if r.failures else ""), file=out, flush=True)
        _summary(p, out)
        print(f"\nMLflow run {p.tracker.run_id or '(journal only)'} in {p.tracker.tracking_uri}"
              f"\nJSONL journal: {p.tracker.journal_path}"
              "\nOpen the UI with: make mlflow-ui   (then browse http://127.0.0.1:5000)", file=out)
    return 0


def _summary(p, out) -> None:
    if not p.history:
        return
    print("\nSummary per device (first cycle -> last cycle)", file=out)
    header = f"{'device':<12}{'params':>10}{'acc before':>12}{'acc after':>11}{'last gain':>11}{'forgetting':>12}{'MB up':>8}{'MB down':>9}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for n in p.names:
        rows = [h for h in p.history if n in h.device_metrics]
        if not rows:
            print(f"{n:<12}{'(no successful cycle)':>40}", file=out)
            continue
        first, last = rows[0].device_metrics[n], rows[-1].device_metrics[n]
        forg = [h.device_metrics[n]["forgetting"] for h in rows if h.device_metrics[n].get("forgetting") is not None]
        up = sum(h.bytes_up.get(n, 0) for h in p.history) / 1e6
        down = sum(h.bytes_down.get(n, 0) for h in p.history) / 1e6
        print(f"{n:<12}{last['params']:>10,.0f}{_fmt(first['acc_before']):>12}{_fmt(last['acc_after']):>11}"
              f"{_fmt(last['acc_after'] - last['acc_before']):>11}"
              f"{_fmt(sum(forg) / len(forg) if forg else None):>12}{up:>8.2f}{down:>9.2f}", file=out)
    decisions = [h.merge.get("decision") for h in p.history]
    print(f"\nmerges: {decisions}; cloud val accuracy by cycle: "
          f"{[round(100 * h.cloud_val_acc, 1) for h in p.history]}", file=out)


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
    c = sub.add_parser("check-config", help="validate a YAML config and print it")
    c.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            cfg = demo_config()
            if args.workdir:
                cfg = cfg.model_copy(update={"workdir": args.workdir})
            return run_campaign(cfg, args.cycles)
        cfg = PlatformConfig.from_yaml(args.config)
        if args.command == "check-config":
            print(cfg.model_dump_json(indent=2))
            return 0
        if args.address:
            cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": args.address})})
        return run_campaign(cfg, args.cycles)
    except (ConfigError, FileNotFoundError, ConnectionError) as err:
        print(f"eclm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
