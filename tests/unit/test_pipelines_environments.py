"""Environments devices report, replayed on the cloud's proxy data; the cloud's metric on them."""

from __future__ import annotations

import copy

import torch

from eclm.campaign.messages import AttributedUpdate, CloudSnapshot
from eclm.config import PlatformConfig
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService
from eclm.pipelines.environments import ProxyEnvironments, environment_name, environment_of, merged

torch.set_num_threads(1)


def test_reported_environments_are_validated_and_kept_in_first_seen_order():
    assert environment_of("gaussian_noise", 3) == ("gaussian_noise", 3)
    assert environment_of("none", 1) is None and environment_of(None, None) is None
    assert environment_of("lava", 3) is None and environment_of("contrast", 9) is None  # not trusted, ignored
    reported = [("rotation", 1), None, ("contrast", 2), ("rotation", 1), environment_of("gaussian_blur", 9)]
    got = merged([("contrast", 2)], reported)
    assert got == (("contrast", 2), ("rotation", 1)) and environment_name(got[1]) == "rotation@1"


def test_proxy_images_under_an_environment_are_the_same_every_time_and_differ_per_split():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 3, 8, 8, generator=gen), torch.arange(20) % 4
    proxy = ProxyEnvironments(x, y, x.clone(), y.clone(), seed=3)
    a, _ = proxy.images(("gaussian_noise", 3), "train")
    b, _ = proxy.images(("gaussian_noise", 3), "train")
    c, _ = proxy.images(("gaussian_noise", 3), "val")
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    sub, labels = proxy.images(("contrast", 2), "val", classes=[1, 2])
    assert len(sub) == 10 and set(labels.tolist()) == {1, 2}
    mixed, _ = proxy.mixed([("inversion", 5)], torch.Generator().manual_seed(0))
    inverted = torch.isclose(mixed, 1 - x).flatten(1).all(1)
    assert 0 < int(inverted.sum()) < 20  # each image clean or under the environment


def _config(tmp_path) -> PlatformConfig:
    return PlatformConfig.from_dict({
        "name": "envs", "workdir": str(tmp_path),
        "data": {"source": "digits", "image_size": 16, "num_devices": 1, "classes_per_device": 3,
                 "samples_per_device": [30, 40], "drift": {"corruptions": ["gaussian_noise"], "severity": [3, 3]}},
        "backbone": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}, "modules_per_layer": 2},
        "offline": {"epochs": 1, "enhance_epochs": 0},
        "adaptation": {"epochs": 1},
        "merge": {"tolerance": 1.0, "device_tolerance": 1.0, "repair_epochs": 1},
        "tracking": {"enabled": False},
    })


def test_the_cloud_learns_which_environments_its_devices_met_and_keeps_them_across_a_restart(tmp_path):
    cfg = _config(tmp_path)
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0)
    assert cloud.seen_accuracy() is None
    edge.install(cloud.derive(edge.summary(cloud.selector_payload())), cloud.info().costs)
    outcome = cloud.merge([AttributedUpdate(channel="edge-0", issued=edge.spec, enrolled_classes=edge.classes,
                                            update=edge.adapt())])
    assert outcome.decision == "accept"
    assert outcome.environments == ("gaussian_noise@3",) and 0 <= outcome.cloud_seen_acc <= 1
    snapshot = cloud.snapshot()
    again = CloudService(cfg)
    again.restore(CloudSnapshot(version=snapshot.version, weights=snapshot.weights,
                                best_val_acc=snapshot.best_val_acc))
    assert again.environments == (("gaussian_noise", 3),)
    assert again.seen_accuracy() == cloud.seen_accuracy() and again.state_digest() == cloud.state_digest()
    # the accepted candidate's own evaluation is kept as the paired reference: the same as evaluating anew
    fresh = cloud._correct(cloud.model.extract(cloud.model.full_spec()), cloud._validated_environments())
    assert torch.equal(cloud.best_val_correct, fresh) and torch.equal(again.best_val_correct, fresh)


def test_correctness_under_an_environment_leaves_the_model_as_it_was_and_matches_a_copy():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(24, 3, 16, 16, generator=gen), torch.arange(24) % 3
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    proxy = ProxyEnvironments(x, y, x[:12], y[:12], seed=0)
    copy_result = proxy.correct(copy.deepcopy(model), ("contrast", 3))
    got = proxy.correct(model, ("contrast", 3))
    assert torch.equal(got, copy_result)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_cached_environment_images_are_the_ones_computed_fresh():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(16, 3, 8, 8, generator=gen), torch.arange(16) % 4
    cached, uncached = (ProxyEnvironments(x, y, x, y, seed=5, cache_size=n) for n in (2, 0))
    for env, split, classes in [(("gaussian_noise", 2), "train", None), (("gaussian_blur", 3), "val", [0, 1]),
                                (("rotation", 4), "train", [2]), (("gaussian_noise", 2), "train", None)]:
        a, b = cached.images(env, split, classes), uncached.images(env, split, classes)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert cached.images(("rotation", 4), "train", [2])[0] is cached.images(("rotation", 4), "train", [2])[0]


def test_norm_statistics_come_from_a_fixed_sample_of_at_most_calibration_samples_images():
    from eclm.pipelines.adaptation import recalibrate_norms
    from eclm.pipelines.mcnemar import correct_mask

    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(40, 3, 16, 16, generator=gen), torch.arange(40) % 4
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 4)).eval()
    env = ("brightness", 3)
    sampled, full = ProxyEnvironments(x, y, x[:20], y[:20], seed=1, calibration_samples=8), ProxyEnvironments(
        x, y, x[:20], y[:20], seed=1)
    sample = sampled.calibration_images(env)
    assert len(sample) == 8 and torch.equal(sample, sampled.calibration_images(env))  # fixed across calls
    everything = full.calibration_images(env)
    assert len(everything) == 40
    rows = [next(i for i in range(40) if torch.equal(everything[i], s)) for s in sample]
    assert rows == sorted(rows) and len(set(rows)) == 8  # distinct training images, in their order
    assert len(sampled.calibration_images(env, classes=[1])) == 8 and len(sampled.calibration_images(env, [1, 2])) == 8
    # what correct() measures is the model recalibrated on exactly that sample
    reference = copy.deepcopy(model)
    recalibrate_norms(reference, sample)
    assert torch.equal(sampled.correct(model, env), correct_mask(reference, *sampled.images(env, "val")))
    few = ProxyEnvironments(x[:6], y[:6], x, y, seed=1, calibration_samples=8)
    assert torch.equal(few.calibration_images(env), few.images(env, "train")[0])  # fewer than the cap: all


def test_a_merge_that_keeps_the_version_draws_another_repair_and_a_new_version_starts_afresh(tmp_path):
    cfg = _config(tmp_path)
    cloud, edge = CloudService(cfg), EdgeService(cfg, 0)
    state = cloud.model.backbone.state_dict()

    def repaired() -> dict[str, torch.Tensor]:
        cloud._repair = ((("gaussian_noise", 3),), None)  # what a merge sets first: its environments, every weight
        return cloud._finalize_candidate(state)

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    first = repaired()
    assert same(first, repaired())  # one draw for the baseline and every candidate of a merge
    assert cloud.merge([]).decision == "reject" and cloud.version == 0
    second = repaired()
    assert not same(first, second)  # a harmful draw does not come back in every later round
    assert cloud.merge([]).decision == "reject" and not same(second, repaired())
    edge.install(cloud.derive(edge.summary(cloud.selector_payload())), cloud.info().costs)
    outcome = cloud.merge([AttributedUpdate(channel="edge-0", issued=edge.spec, enrolled_classes=edge.classes,
                                            update=edge.adapt())])
    assert outcome.decision == "accept" and cloud.version == 1
    assert cloud._repair_seed() == cfg.seed + 1  # the first draw of the new version, as after a restart
    snapshot = cloud.snapshot()
    cloud.merge([])
    cloud.restore(snapshot)
    assert cloud._repair_seed() == cfg.seed + 1


def test_a_repair_that_would_ruin_the_current_model_is_skipped_and_the_update_judged_without_it(tmp_path):
    raw = _config(tmp_path).model_dump(mode="json")
    raw["offline"]["epochs"] = 4
    cloud, edge = CloudService(PlatformConfig.from_dict(raw)), EdgeService(PlatformConfig.from_dict(raw), 0)
    cloud.pretrain()

    def merge(cloud: CloudService):
        edge.install(cloud.derive(edge.summary(cloud.selector_payload())), cloud.info().costs)
        return cloud.merge([AttributedUpdate(channel="edge-0", issued=edge.spec, enrolled_classes=edge.classes,
                                             update=edge.adapt())])

    assert "repair" not in merge(cloud).details  # the environment is seen now: the best version is the reference
    raw["merge"] |= {"repair_lr": 50.0, "repair_scope": "all"}  # from here every repair draw wrecks the model
    ruinous = CloudService(PlatformConfig.from_dict(raw))
    ruinous.restore(cloud.snapshot())
    best = float(ruinous.best_val_correct.float().mean())
    outcome = merge(ruinous)
    assert outcome.details["repair"].startswith("skipped: the current model finalized fails against the best")
    assert abs(outcome.cloud_acc_before - best) < 0.02  # judged from the current model as it was accepted


def test_an_upload_the_merge_excludes_changes_nothing_of_it_not_even_the_environments_validated(tmp_path):
    raw = _config(tmp_path).model_dump(mode="json")
    raw["data"]["num_devices"] = 2
    raw["devices"] = [raw["devices"][0], {**raw["devices"][0], "name": "edge-1"}]
    cfg = PlatformConfig.from_dict(raw)
    with_forged, without = CloudService(cfg), CloudService(cfg)
    uploads = []
    for i in range(2):
        edge = EdgeService(cfg, i)
        summary = edge.summary(with_forged.selector_payload())
        edge.install(with_forged.derive(summary), with_forged.info().costs)
        without.derive(summary)
        uploads.append(AttributedUpdate(channel=f"edge-{i}", issued=edge.spec, enrolled_classes=edge.classes,
                                        update=edge.adapt()))
    # edge-1 claims an implausible sample count (excluded) and an environment no admitted device met
    honest = uploads[1].update
    forged = honest.model_copy(update={"num_samples": 10**6, "metrics": honest.metrics.model_copy(
        update={"environment": "contrast", "severity": 2})})
    outcome = with_forged.merge([uploads[0], uploads[1].model_copy(update={"update": forged})])
    assert "edge-1" in outcome.rejected and "edge-1" not in outcome.accepted and outcome.version == 1
    assert outcome.environments == ("gaussian_noise@3",)  # the excluded device's claim did not join
    alone = without.merge(uploads[:1])
    assert alone.decision == "accept" and alone.environments == outcome.environments
    # validated on the same samples, repaired on the same environments: the same model, bit for bit
    assert with_forged.state_digest() == without.state_digest()
    assert outcome.cloud_acc_after == alone.cloud_acc_after
