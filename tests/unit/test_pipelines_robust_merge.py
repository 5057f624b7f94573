"""The validated merge against poisoned and faulty devices, on a tiny modular ResNet (no Ray).

Each attack is rejected with its reason while the honest updates of the same round are merged.
Two kinds of honest rounds:

* *agreeing* updates: every device moves its weights along a common direction plus its own noise
  (what devices that learn something in common send); attacks on them test the round-relative
  screen (norm bound, direction, identical updates) and the claim bounds;
* *trained* updates: real fine-tunes of each device's sub-model on synthetic class templates,
  with the cloud's reference update computed the same way on its own proxy samples; a device
  trained on flipped labels is caught by the trust check on its classifier rows.

Validation always accepts here (a constant evaluator), so what is rejected is the defences' doing.
"""

from __future__ import annotations

import math

import pytest
import torch

from eclm.modules import ModuleUpdate, SubModelSpec, classifier_keys, modularize
from eclm.modules.deltas import is_delta_key
from eclm.pipelines.defences import RobustScreen, reference_update
from eclm.pipelines.validated_merge import Evaluation, ValidatedMerge

SPECS = [(0,), (1,), (0, 1), (0, 1), (0,)]  # module groups per layer of d0..d4: every module held >= 3 times


@pytest.fixture(scope="module")
def modular():
    torch.manual_seed(0)
    return modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 16, 32, 64)).eval()


def _spec(model, groups) -> SubModelSpec:
    return SubModelSpec(model_id=model.model_id, groups=[groups] * len(model.layers))


def _classes(i: int) -> list[int]:
    return [(3 * i + j) % 10 for j in range(3)]


def _low_rank(shape, gen, rank: int = 2) -> torch.Tensor:
    """A random direction of the given shape that, as a ``(shape[0], rest)`` matrix, has rank ``rank``
    (a change learned from data is low-rank; i.i.d. noise is not and the screen rejects it)."""
    if len(shape) < 2:
        return torch.randn(shape, generator=gen)
    rows, cols = shape[0], math.prod(shape[1:])
    m = torch.randn(rows, rank, generator=gen) @ torch.randn(rank, cols, generator=gen) / rank**0.5
    return m.reshape(shape)


def _agreeing_round(model, devices: int = 5) -> list[ModuleUpdate]:
    """Honest updates: cloud + 1 % of each tensor's scale x (common low-rank direction + half as much own noise)."""
    gen = torch.Generator().manual_seed(0)
    backbone = model.backbone.state_dict()
    signal = {k: _low_rank(v.shape, gen) * v.float().std().clamp_min(1e-2) if v.is_floating_point()
              else v for k, v in backbone.items()}
    updates = []
    for i in range(devices):
        spec = _spec(model, SPECS[i % len(SPECS)])
        cloud, common = model.extract(spec).state_dict(), model.extract(spec, signal).state_dict()
        state = {k: v + 0.01 * (common[k] + 0.5 * common[k].std() * torch.randn(v.shape, generator=gen))
                 if is_delta_key(k, v) else v.clone() for k, v in cloud.items()}
        updates.append(ModuleUpdate(f"d{i}", spec, state, [[0.5, 0.5] for _ in model.layers], 100, _classes(i)))
    return updates


def _poisoned(model, u: ModuleUpdate, attack: str) -> ModuleUpdate:
    """``u`` with its change to the cloud (``state - cloud``) transformed by ``attack``."""
    cloud = model.extract(u.spec).state_dict()
    gen = torch.Generator().manual_seed(9)
    change = {"sign flip": lambda d, c: -d, "scaled x10": lambda d, c: 10 * d, "scaled x0.1": lambda d, c: 0.1 * d,
              "random noise": lambda d, c: 0.3 * c.float().std() * torch.randn(d.shape, generator=gen),
              "noise of its own size": lambda d, c: _like(torch.randn(d.shape, generator=gen), d)}[attack]
    state = {k: cloud[k] + change(v - cloud[k], cloud[k]) if is_delta_key(k, v) else v for k, v in u.state.items()}
    return ModuleUpdate(u.device_id, u.spec, state, u.importance, u.num_samples, u.classes)


def _like(noise: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """``noise`` rescaled to the norm of ``change`` (a faulty device that sends garbage of a normal size)."""
    return noise * (change.float().norm() / noise.norm().clamp_min(1e-12))


def _accept_all(state, updates) -> Evaluation:
    return Evaluation(0.9, {})


def _merge(model, updates, **kwargs):
    pipeline = ValidatedMerge(evaluate=_accept_all, max_relative_norm=2.0,
                              known_classes={f"d{i}": set(_classes(i)) for i in range(20)}, **{"screen": RobustScreen()} | kwargs)
    given = {u.device_id: u.spec for u in updates}
    cloud = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    state, report = pipeline.run(cloud, model.layers, updates, given, lambda s: set(model.extract(s).state_dict()))
    return state, report


def test_an_agreeing_honest_round_is_merged_whole(modular):
    state, report = _merge(modular, _agreeing_round(modular))
    assert report.decision == "accept" and sorted(report.accepted) == [f"d{i}" for i in range(5)]
    assert all(s["passed"] and s["compared_units"] > 0 for s in report.screen.values())


@pytest.mark.parametrize(("attack", "reason"), [
    ("sign flip", "screen: direction: cosine"),
    ("scaled x10", "screen: norm"),
    ("scaled x0.1", "screen: norm"),
    ("random noise", "screen: norm"),
    ("noise of its own size", "screen: noise-like"),
])
def test_a_poisoned_update_is_rejected_and_the_honest_ones_merged(modular, attack, reason):
    updates = _agreeing_round(modular)
    updates[0] = _poisoned(modular, updates[0], attack)
    state, report = _merge(modular, updates)
    assert report.decision == "partial" and sorted(report.accepted) == ["d1", "d2", "d3", "d4"]
    assert report.rejected["d0"].startswith(reason), report.rejected
    assert state is not None and not report.screen["d0"]["passed"]


def test_noise_of_a_normal_size_passes_every_check_but_the_noise_check(modular):
    updates = _agreeing_round(modular)
    updates[0] = _poisoned(modular, updates[0], "noise of its own size")
    _, off = _merge(modular, updates, screen=RobustScreen(max_relative_stable_rank=None))
    _, on = _merge(modular, updates)
    assert off.screen["d0"]["passed"] and off.screen["d0"]["relative_stable_rank"] is None
    assert on.rejected["d0"].startswith("screen: noise-like") and "norm" not in on.rejected["d0"]
    assert on.screen["d0"]["relative_stable_rank"] > 0.9
    assert max(on.screen[f"d{i}"]["relative_stable_rank"] for i in range(1, 5)) < 0.6  # low-rank honest changes


def test_colluding_identical_updates_are_rejected(modular):
    updates = _agreeing_round(modular)
    crafted = _poisoned(modular, updates[0], "sign flip")
    updates[0] = crafted
    updates[4] = ModuleUpdate("d4", crafted.spec, {k: v.clone() for k, v in crafted.state.items()},
                              updates[4].importance, updates[4].num_samples, updates[4].classes)
    state, report = _merge(modular, updates)
    assert sorted(report.accepted) == ["d1", "d2", "d3"]
    assert "identical to the update of ['d4']" in report.rejected["d0"]
    assert "identical to the update of ['d0']" in report.rejected["d4"]


def test_one_upload_shared_by_design_is_screened_once_not_as_collusion(modular):
    updates = _agreeing_round(modular)
    updates[4] = ModuleUpdate("d4", updates[0].spec, {k: v.clone() for k, v in updates[0].state.items()},
                              updates[4].importance, updates[4].num_samples, updates[4].classes)
    state, report = _merge(modular, updates, same_upload={"d0", "d4"})  # e.g. the devices of a split round
    assert sorted(report.accepted) == [f"d{i}" for i in range(5)], report.rejected
    assert report.screen["d0"] == report.screen["d4"] and report.screen["d0"]["identical_to"] == []


CLAIMS = [
    ("importance -1e6", {"importance": -1e6}, "importance outside [0, 1]"),
    ("importance 1e9", {"importance": 1e9}, "importance outside [0, 1]"),
    ("importance None", {"importance": None}, "importance summary has the wrong shape"),
    ("importance NaN", {"importance": math.nan}, "importance summary is not finite"),
    ("foreign classes", {"classes": [0, 1, 9]}, "claims classes [9] the device does not hold"),
    ("inf samples", {"num_samples": math.inf}, "num_samples must be a finite number"),
    ("huge samples", {"num_samples": 10**9}, "exceeds the plausible maximum 150"),
    ("NaN metric", {"metrics": {"acc_after": math.nan}}, "metrics.acc_after is not finite"),
]


@pytest.mark.parametrize(("case", "claim", "reason"), CLAIMS, ids=[c[0] for c in CLAIMS])
def test_an_implausible_claim_is_rejected_and_the_honest_ones_merged(modular, case, claim, reason):
    updates = _agreeing_round(modular)
    for field, value in claim.items():
        if field == "importance":
            value = None if value is None else [[value, 0.5] for _ in modular.layers]
        setattr(updates[0], field, value)
    state, report = _merge(modular, updates, max_samples=150)
    assert report.rejected["d0"].startswith("integrity: ") and reason in report.rejected["d0"], report.rejected
    assert sorted(report.accepted) == ["d1", "d2", "d3", "d4"] and state is not None
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_an_exception_while_screening_one_device_rejects_that_device_alone(modular):
    updates = _agreeing_round(modular)

    def reference(u: ModuleUpdate) -> dict:
        if u.device_id == "d2":
            raise RuntimeError("reference fine-tune failed")
        return {}

    updates[1].state = dict(updates[1].state, **{"fc.bias": "not a tensor"})
    state, report = _merge(modular, updates, reference=reference)
    assert report.rejected["d2"].startswith("screen: could not be screened: RuntimeError")
    assert report.rejected["d1"].startswith("integrity: check failed")
    assert sorted(report.accepted) == ["d0", "d3", "d4"] and state is not None


# ------------------------------------------------------------ trained updates
def _templates(n_classes: int = 10) -> torch.Tensor:
    return torch.randn(n_classes, 3, 32, 32, generator=torch.Generator().manual_seed(100))


def _data(classes, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat_interleave(per_class)
    return _templates()[y] + 0.7 * torch.randn(len(y), 3, 32, 32, generator=gen), y


PROXY = _data(list(range(10)), 16, seed=1)


def _train(model, spec, classes, seed: int, flip: bool = False) -> dict:
    x, y = _data(classes, 16, seed)
    return reference_update(model.extract(spec), x, 9 - y if flip else y, steps=6, lr=0.05, batch_size=16, seed=seed)


def _trained_update(model, i: int, flip: bool = False) -> ModuleUpdate:
    spec = _spec(model, SPECS[i % len(SPECS)])
    delta = _train(model, spec, _classes(i), seed=10 + i, flip=flip)
    cloud = model.extract(spec).state_dict()
    state = {k: v + delta[k] if k in delta else v.clone() for k, v in cloud.items()}
    return ModuleUpdate(f"d{i}", spec, state, [[0.5, 0.5] for _ in model.layers], 48, _classes(i))


def _cloud_reference(model):
    def reference(u: ModuleUpdate) -> dict:
        mask = torch.isin(PROXY[1], torch.tensor(u.classes))
        return reference_update(model.extract(u.spec), PROXY[0][mask], PROXY[1][mask], steps=6, lr=0.05,
                                batch_size=16, seed=0)
    return reference


def test_a_label_flip_trained_update_is_rejected_by_the_trust_check(modular):
    updates = [_trained_update(modular, i) for i in range(5)]
    updates[0] = _trained_update(modular, 0, flip=True)
    state, report = _merge(modular, updates, reference=_cloud_reference(modular),
                           class_rows=tuple(classifier_keys(modular.backbone)))
    assert "cloud's reference update on the classifier rows of its classes" in report.rejected["d0"], report.screen
    assert report.screen["d0"]["head_trust_cosine"] < -0.5
    assert sorted(report.accepted) == ["d1", "d2", "d3", "d4"], report.rejected


@pytest.mark.parametrize("device", [0, 2])
def test_a_lone_honest_update_is_accepted(modular, device):
    u = _trained_update(modular, device)
    state, report = _merge(modular, [u], reference=_cloud_reference(modular),
                           class_rows=tuple(classifier_keys(modular.backbone)))
    assert report.decision == "accept" and report.accepted == [f"d{device}"]
    verdict = report.screen[f"d{device}"]
    assert verdict["compared_units"] == 0 and verdict["trust_cosine"] > 0 and verdict["head_trust_cosine"] > 0


# ------------------------------------------------------------ behaviour on the device's own classes
@pytest.fixture(scope="module")
def trained():
    """A cloud model that already knows the proxy classes (own-class accuracy has room to fall)."""
    from eclm.pipelines.adaptation import finetune

    torch.manual_seed(1)
    model = modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 16, 32, 64))
    finetune(model.backbone, *_data(list(range(10)), 24, seed=2), epochs=4, lr=0.05, batch_size=16,
             generator=torch.Generator().manual_seed(0))
    return model.eval()


def _cyclic_flip_update(model, i: int, steps: int = 12, lr: float = 0.05) -> ModuleUpdate:
    """Device ``i`` trained on its own classes relabelled cyclically (c_j -> c_{j+1})."""
    spec, classes = _spec(model, SPECS[i % len(SPECS)]), _classes(i)
    x, y = _data(classes, 16, seed=10 + i)
    to = {c: classes[(j + 1) % len(classes)] for j, c in enumerate(classes)}
    flipped = torch.tensor([to[int(c)] for c in y])
    delta = reference_update(model.extract(spec), x, flipped, steps=steps, lr=lr, batch_size=16, seed=i)
    cloud = model.extract(spec).state_dict()
    state = {k: v + delta[k] if k in delta else v.clone() for k, v in cloud.items()}
    return ModuleUpdate(f"d{i}", spec, state, [[0.5, 0.5] for _ in model.layers], 48, classes)


def _own_scores(model):
    from eclm.pipelines.mcnemar import score_samples

    def own(state, u: ModuleUpdate):
        mask = torch.isin(PROXY[1], torch.tensor(u.classes))
        return score_samples(model.extract(u.spec, state), PROXY[0][mask], PROXY[1][mask])
    return own


def test_an_update_that_ruins_its_own_classes_is_rejected_by_the_behaviour_check(trained):
    updates = [_trained_update(trained, i) for i in range(5)]
    updates[0] = _cyclic_flip_update(trained, 0)
    state, report = _merge(trained, updates, own_scores=_own_scores(trained),
                           class_rows=tuple(classifier_keys(trained.backbone)))
    verdict = report.screen["d0"]
    assert verdict["own_acc_before"] - verdict["own_acc_after"] > 0.3 and verdict["own_samples"] == 48
    assert "behaviour: accuracy on its own classes" in report.rejected["d0"], report.screen
    assert sorted(report.accepted) == ["d1", "d2", "d3", "d4"], report.rejected
    assert all(s["own_acc_before"] is None or s["own_acc_before"] - s["own_acc_after"] < 0.3
               for d, s in report.screen.items() if d != "d0")


def test_a_brief_label_flip_that_moves_few_predictions_is_rejected_by_the_loss_among_its_classes(trained):
    updates = [_trained_update(trained, i) for i in range(5)]
    updates[0] = _cyclic_flip_update(trained, 0, steps=2, lr=0.04)  # too brief to flip many predictions
    rows = tuple(classifier_keys(trained.backbone))
    _, report = _merge(trained, updates, own_scores=_own_scores(trained), class_rows=rows)
    verdict = report.screen["d0"]
    assert verdict["own_acc_before"] - verdict["own_acc_after"] < 0.1  # the accuracy check cannot fire
    assert verdict["own_loss_least_class_rise"] > 0.05 and verdict["own_loss_p"] < 1e-6
    assert report.rejected["d0"].startswith("screen: own-class loss: among its own classes"), report.rejected
    assert sorted(report.accepted) == ["d1", "d2", "d3", "d4"], report.rejected
    _, without = _merge(trained, updates, own_scores=_own_scores(trained), class_rows=rows,
                        screen=RobustScreen(max_own_loss_rise=None))
    assert "d0" in without.accepted, without.rejected


def test_the_loss_check_compares_every_upload_with_the_cloud(trained):
    seen = []

    def own(state, u):
        seen.append(u.device_id)
        return _own_scores(trained)(state, u)

    updates = [_trained_update(trained, i) for i in range(3)]
    _, report = _merge(trained, updates, own_scores=own, class_rows=tuple(classifier_keys(trained.backbone)))
    assert seen == ["d0", "d0", "d1", "d1", "d2", "d2"]
    assert all(s["own_loss_before"] is not None and s["own_loss_p"] is not None for s in report.screen.values())


def test_the_accuracy_check_alone_sees_the_upload_alone_then_the_cloud_only_when_a_drop_is_possible(trained):
    seen = []

    def own(state, u):
        seen.append((u.device_id, state))
        return _own_scores(trained)(state, u)

    cloud = {k: v.clone() for k, v in trained.backbone.state_dict().items()}
    updates = [_trained_update(trained, i) for i in range(3)]
    updates[1] = _cyclic_flip_update(trained, 1)  # the only one whose own-class accuracy can fall by > 0.3
    _, report = _merge(trained, updates, own_scores=own, class_rows=tuple(classifier_keys(trained.backbone)),
                       screen=RobustScreen(max_own_loss_rise=None))
    assert [d for d, _ in seen] == ["d0", "d1", "d1", "d2"]
    for d, alone in (seen[0], seen[1], seen[3]):  # first the update merged alone (head rows merged by class)
        u = updates[int(d[1])]
        mine = trained.extract(u.spec, alone).state_dict()
        assert all(torch.equal(mine[k], u.state[k]) for k in u.state if is_delta_key(k, u.state[k]) and "fc" not in k)
    assert all(torch.equal(seen[2][1][k], cloud[k]) for k in cloud)  # then the cloud's own sub-model
    assert report.screen["d0"]["own_acc_before"] is None and report.screen["d0"]["own_acc_after"] >= 0.7
    assert report.screen["d1"]["own_acc_before"] is not None and "d1" in report.rejected


def test_the_reference_update_clips_as_devices_do(modular):
    spec = _spec(modular, SPECS[2])
    x, y = _data(_classes(0), 16, seed=3)
    common = dict(steps=4, lr=0.05, batch_size=16, momentum=0.9, seed=3)
    free = reference_update(modular.extract(spec), x, y, **common)
    loose = reference_update(modular.extract(spec), x, y, **common, max_grad_norm=1e9)
    tight = reference_update(modular.extract(spec), x, y, **common, max_grad_norm=1e-3)
    assert free.keys() == loose.keys() == tight.keys()
    assert all(torch.equal(free[k], loose[k]) for k in free)  # a clip no step reaches changes nothing

    def norm(change: dict) -> float:
        return float(sum(v.pow(2).sum() for v in change.values())) ** 0.5

    # every step moves at most lr x clip, momentum at most 1 / (1 - 0.9) times that
    assert norm(tight) <= 4 * 0.05 * 1e-3 / (1 - 0.9) * (1 + 1e-3) < norm(free)
