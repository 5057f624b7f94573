"""Drive a campaign from Python: examples/campaign.yaml, a trigger, a cycle by hand, a local swap."""

from pathlib import Path

from eclm import Platform
from eclm.pipelines.triggers import DriftTrigger, PeriodicTrigger

config = Path(__file__).with_name("campaign.yaml")

with Platform.from_yaml(config) as p:                    # local Ray on 127.0.0.1, MLflow in the workdir
    p.pretrain()                                          # offline stage on the cloud's proxy data
    p.schedule(PeriodicTrigger(every_steps=2) | DriftTrigger(threshold=0.5))
    ran = p.run(steps=2)                                  # 2 data steps; a cycle whenever the trigger fires
    print(f"{len(ran)} cycle(s) ran, cloud version {p.state.version}")

    result = p.run_cycle(devices=["camera"])              # a cycle by hand, for one device
    camera = result.device_metrics["camera"]
    print(f"camera: accuracy {camera.acc_before:.1%} -> {camera.acc_after:.1%}, merge {result.merge.decision}")

    swap = p.shrink_device("camera", params_fraction=0.3)  # resources dropped: local swap, no cloud trip
    print(f"camera now holds {swap.params_after:,.0f} parameters (was {swap.params_before:,.0f})")
