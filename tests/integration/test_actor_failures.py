"""A failure inside a real actor reaches the user as its root cause: exception type and full message,
no colour codes, one CLI line with a non-zero exit (own module: the platforms here each need the
single ``cloud`` unit of the shared local Ray)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import tiny_config
from safetensors.torch import save_file

from eclm.cli import EXIT_FAILED, devices_failing_every_cycle, main
from eclm.config import PlatformConfig
from eclm.platform import Platform

pytestmark = pytest.mark.integration

ONE_CYCLE = {"offline": {"epochs": 1, "enhance_epochs": 0, "batch_size": 32, "classes_per_subtask": 3},
             "adaptation.epochs": 1, "tracking": {"enabled": False}}


@pytest.fixture()
def bad_weights(tmp_path) -> dict:
    """A config whose weights file exists (so pre-flight passes) but does not fit the backbone."""
    path = tmp_path / "w.safetensors"
    save_file({"not_a_resnet.weight": torch.zeros(3)}, str(path))
    return tiny_config(tmp_path, **ONE_CYCLE, **{"backbone.weights_path": str(path)})


def test_a_constructor_failure_names_its_exception_not_actor_died(local_ray, bad_weights):
    from eclm.actors import create_cloud_actor
    from eclm.runtime import ActorCallError, gather, gather_all, kill

    cloud = create_cloud_actor(PlatformConfig.from_dict(bad_weights))
    try:
        _, failures = gather({"cloud": cloud.info.remote()}, timeout=300)
        f = failures["cloud"]
        assert (f.kind, f.error_type) == ("dead", "ValueError")
        assert f.message.startswith("ValueError: weights in ") and "do not match ResNet" in f.message
        assert "\n" not in f.message and "\x1b" not in f.message + f.detail
        assert "actor died because of an error raised in its creation task" in f.detail  # Ray's full text,
        assert "load_local_weights" in f.detail  # with the remote traceback
        with pytest.raises(ActorCallError, match=r"^cloud: ValueError: weights in "):
            gather_all({"cloud": cloud.info.remote()}, timeout=300)
    finally:
        kill(cloud)


def test_a_method_failure_keeps_the_whole_message(local_ray, tmp_path):
    from eclm.actors import create_edge_actor
    from eclm.campaign.messages import SubModelPackage
    from eclm.modules import SubModelSpec
    from eclm.runtime import gather, kill

    cfg = PlatformConfig.from_dict(tiny_config(tmp_path, **ONE_CYCLE))
    edge = create_edge_actor(cfg, 0)
    keep = SubModelPackage(device="d0", spec=SubModelSpec(model_id="m", groups=((0,), (1,))), version=0)
    try:
        _, failures = gather({"d0": edge.install.remote(keep, None)}, timeout=300)  # keep what it does not hold
        f = failures["d0"]
        assert (f.kind, f.error_type) == ("error", "ValueError")
        assert f.message.startswith("ValueError: device d0: no weights sent")  # not cut at a line
        assert '"model_id":"m"' in f.message
    finally:
        kill(edge)


def test_eclm_run_prints_one_line_with_the_root_cause_and_exits_1(local_ray, bad_weights, tmp_path, capfd):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(bad_weights))
    try:
        assert main(["run", "--config", str(path)]) == EXIT_FAILED
    finally:  # Platform.start stops what it created when it fails: nothing may be left behind
        from ray._private import state

        alive = [a for a in state.actors().values() if a["State"] == "ALIVE" and "Service" in a["ActorClassName"]]
        assert not alive, alive
    err = capfd.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("eclm:") and "failed" in x]
    assert line.startswith("eclm: starting the platform failed: ValueError: weights in ")
    assert "do not match ResNet" in line and line.endswith("(--debug shows the traceback)")
    assert "Traceback" not in err and "\x1b" not in err and "actor died" not in err


def test_a_device_starved_in_every_cycle_fails_the_campaign(local_ray, tmp_path):
    cfg = tiny_config(tmp_path, **ONE_CYCLE, devices=[{"name": "d0"}, {"name": "d1"}],
                      **{"data.num_devices": 2})
    with Platform(cfg) as p:
        p.set_device_resources("d1", memory_mb=0.01)  # below any sub-model, as the cloud finds out
        for _ in range(2):
            p.run_cycle()
        failing = devices_failing_every_cycle(p.history)
    assert set(failing) == {"d1"} and failing["d1"][0] == 2
    assert failing["d1"][1].startswith("BudgetTooSmallError: device 'd1': budget ")


def test_gather_hands_each_result_on_in_completion_order_and_fails_the_rest_as_before(local_ray):
    import time

    import ray

    from eclm.runtime import gather

    @ray.remote(num_cpus=0)
    def work(delay: float, fail: bool = False) -> float:
        time.sleep(delay)
        if fail:
            raise ValueError("bad input")
        return delay

    seen: list[str] = []
    refs = {"slow": work.remote(2.0), "fast": work.remote(0.0), "bad": work.remote(0.0, True),
            "stuck": work.remote(120.0)}
    results, failures = gather(refs, timeout=8, each=lambda key, value: seen.append(key))
    assert seen == ["fast", "slow"]  # as they completed; never a failure
    assert results == {"slow": 2.0, "fast": 0.0} and list(results) == ["slow", "fast"]  # keyed like refs
    assert (failures["bad"].kind, failures["bad"].error_type) == ("error", "ValueError")
    assert failures["stuck"].kind == "timeout" and set(failures) == {"bad", "stuck"}
