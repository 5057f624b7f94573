"""Module-sparse training: the memory model, the trainable subset, and training only that subset."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from eclm.data import ReplayBuffer
from eclm.modules import BudgetTooSmallError, SubModelSpec, modularize
from eclm.modules.merge import tensor_owner
from eclm.modules.sparse_training import SparsePlan, module_sparse, trainable_slices
from eclm.modules.spec import TrainableSpec
from eclm.modules.trainable import EXACT_SEARCH_ITEMS, TrainingMemory, _knapsack, derive_trainable
from eclm.pipelines.adaptation import finetune, training_memory_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    m = modularize("resnet18", modules_per_layer=4, num_classes=10, channels=(8, 16, 16, 32), input_size=(3, 16, 16))
    for name, mod in m.backbone.named_modules():
        if name.endswith("bn2"):  # timm zero-initialises the last norm of a block: no gradient would reach modules
            torch.nn.init.ones_(mod.weight)
    return m


@pytest.fixture(scope="module")
def memory(model):
    return training_memory_model(model.backbone, batch=24)


def uniform(model):
    return [[1.0 / n] * n for n in model.layer_sizes]


def test_memory_model_counts_weights_trainables_and_kept_activations(model, memory):
    costs, spec = model.costs(), model.full_spec()
    empty = TrainableSpec(groups=((),) * len(spec.groups), head_rows=(1, 2))
    head_only = memory.breakdown(costs, spec, empty)
    assert head_only["activations"] == 0 and head_only["trainable"] == 16 * 2 * memory.head_row_params
    late = memory.breakdown(costs, spec, empty.model_copy(update={"groups": ((),) * 7 + ((0,),)}))
    early = memory.breakdown(costs, spec, empty.model_copy(update={"groups": ((0,),) + ((),) * 7}))
    assert 0 < late["activations"] < early["activations"]  # backward from layer 0 keeps every layer's activations
    dense = memory.breakdown(costs, spec, TrainableSpec.dense(spec))
    assert dense["trainable"] == 16 * costs.total(spec)["params"]
    assert dense["total"] > early["total"] > late["total"] > head_only["total"]


@pytest.mark.parametrize("share", [0.05, 0.25, 0.6])
def test_trainable_subset_respects_the_share_and_the_memory(model, memory, share):
    costs, spec = model.costs(), model.full_spec()
    limit = 0.5 * memory.total(costs, spec, TrainableSpec.dense(spec))
    plan = derive_trainable(costs, spec, uniform(model), memory, max_memory=limit, share=share, head_rows=(3, 5))
    assert plan.within(spec) and plan.head_rows == (3, 5) and plan.num_modules() > 0
    assert memory.total(costs, spec, plan) <= limit
    outside = memory.trainable_params(costs, spec, plan) - memory.head_row_params * 2
    assert outside <= share * costs.total(spec)["params"] + 1e-6


def test_the_parts_outside_modules_are_trained_only_when_backward_through_everything_fits(model, memory):
    costs, spec = model.costs(), model.full_spec()
    roomy = derive_trainable(costs, spec, uniform(model), memory, max_memory=None, share=1.0, head_rows=(0,))
    assert roomy.shared and roomy.groups == spec.groups
    tight_limit = memory.total(costs, spec, TrainableSpec(groups=((),) * 7 + ((0,),), head_rows=(0,))) * 1.05
    tight = derive_trainable(costs, spec, uniform(model), memory, max_memory=tight_limit, share=1.0, head_rows=(0,))
    assert not tight.shared and not any(tight.groups[:4])  # only late layers fit


def test_dense_training_when_it_fits_and_no_share_is_set(model, memory):
    costs, spec = model.costs(), model.full_spec()
    assert derive_trainable(costs, spec, uniform(model), memory, max_memory=None, share=None,
                            head_rows=None).is_dense(spec)


def test_memory_below_the_classifier_rows_alone_is_refused(model, memory):
    costs, spec = model.costs(), model.full_spec()
    with pytest.raises(BudgetTooSmallError, match="classifier rows"):
        derive_trainable(costs, spec, uniform(model), memory, max_memory=1000.0, share=0.25, head_rows=(0,))


def test_importance_decides_which_modules_train(model, memory):
    costs, spec = model.costs(), model.full_spec()
    importance = [[0.01] * n for n in model.layer_sizes]  # rows need not sum to 1 here
    importance[6] = [0.7, 0.1, 0.1, 0.1]
    limit = memory.total(costs, spec, TrainableSpec(groups=((),) * 6 + ((0,), ()), head_rows=(0,))) + 1
    plan = derive_trainable(costs, spec, importance, memory, max_memory=limit, share=1.0, head_rows=(0,))
    assert plan.groups[6] == (0,)


def test_only_the_trainable_slices_move_and_the_optimizer_holds_only_them(model):
    spec = SubModelSpec(model_id=model.model_id, groups=[(0, 1, 2), (1, 3), (0, 1), (2,), (0, 3), (1, 2), (0, 2, 3), (3,)])
    sub = model.extract(spec)
    plan = TrainableSpec(groups=[(), (), (), (), (3,), (1,), (0, 2), ()], head_rows=(2, 5))
    before = {k: v.clone() for k, v in sub.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 3, 16, 16, generator=gen), torch.tensor([2, 5] * 16)
    slices = trainable_slices(sub, model.layers, spec, plan)
    expected = sum(before[n].numel() if s is None else before[n].numel() // before[n].shape[s[0]] * len(s[1])
                   for n, s in slices.items())
    with module_sparse(sub, SparsePlan(model.layers, spec, plan)) as st:
        assert st.numel == expected  # gradients and momentum exist for these entries only
        assert not any(p.requires_grad for stage in st.frozen for p in stage.parameters())
        assert len(st.frozen) == 5  # stem and layers 0-3 run without autograd
    finetune(sub, x, y, epochs=2, lr=0.1, batch_size=8, sparse=SparsePlan(model.layers, spec, plan))
    after = sub.state_dict()
    assert list(after) == list(before) and all(p.requires_grad for p in sub.parameters())
    moved = {k for k in after if after[k].is_floating_point() and "running" not in k
             and not torch.equal(after[k], before[k])}
    assert moved and all(k in slices for k in moved)
    for key in moved:
        dim, index = slices[key] if slices[key] is not None else (0, torch.arange(after[key].shape[0]))
        frozen = torch.ones(after[key].shape[dim], dtype=torch.bool)
        frozen[index] = False
        assert torch.equal(after[key].index_select(dim, frozen.nonzero().flatten()),
                           before[key].index_select(dim, frozen.nonzero().flatten()))
    assert {tensor_owner(model.layers, k)[0] for k in moved if tensor_owner(model.layers, k)} <= {4, 5, 6}


def test_a_plan_outside_the_sub_model_is_refused(model):
    spec = SubModelSpec(model_id=model.model_id, groups=[(0,)] * 8)
    with pytest.raises(ValueError, match="does not hold"):
        trainable_slices(model.extract(spec), model.layers, spec, TrainableSpec(groups=[(1,)] + [()] * 7))


def test_memory_model_is_built_from_the_classifier(model):
    mem = training_memory_model(model.backbone, batch=10)
    assert isinstance(mem, TrainingMemory) and mem.num_classes == 10
    assert mem.head_row_params == model.backbone.fc.weight.shape[1] + 1


def _brute_force(values, sizes, cap, must):
    best = None
    for r in range(len(values) + 1):
        for chosen in itertools.combinations(range(len(values)), r):
            c = list(chosen)
            if sizes[c].sum() <= cap and (must is None or must[c].any()) and (
                    best is None or values[c].sum() > values[best].sum() + 1e-12):
                best = c
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_knapsack_is_exact_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    for trial in range(40):
        n = int(rng.integers(1, 11))
        values = rng.random(n) + 1e-6
        sizes = rng.integers(100, 5000, n).astype(float) if trial % 3 else np.full(n, 1000.0)
        cap = float(rng.uniform(0, sizes.sum()))
        must = rng.random(n) < 0.3 if trial % 2 else None
        got, want = _knapsack(values, sizes, cap, must), _brute_force(values, sizes, cap, must)
        assert (got is None) == (want is None)
        if got is not None:
            assert sizes[got].sum() <= cap * (1 + 1e-9) and (must is None or must[got].any())
            assert values[got].sum() == pytest.approx(values[want].sum(), rel=1e-12)


def test_the_knapsack_of_many_equal_modules_takes_as_many_as_fit_including_a_required_one():
    n = EXACT_SEARCH_ITEMS  # equal modules: a search that enumerated equally good choices would not end
    must = np.zeros(n, dtype=bool)
    must[-1] = True
    chosen = _knapsack(np.full(n, 0.25), np.full(n, 1000.0), 10_500.0, must)
    assert len(chosen) == 10 and n - 1 in chosen


def test_a_large_knapsack_of_modules_in_layers_is_solved_exactly_without_milp(monkeypatch):
    """Beyond EXACT_SEARCH_ITEMS modules, modules of one size per layer are chosen by how many of
    each layer: the same optimum as ``milp`` (checked against it), which is not called."""
    import eclm.modules.trainable as trainable

    rng = np.random.default_rng(1)
    instances = []
    for trial in range(40):
        layers, per = int(rng.integers(6, 8)), int(rng.integers(5, 7))
        sizes = np.repeat(rng.integers(50, 5000, layers).astype(float), per)
        must = None if trial % 2 else np.repeat(np.arange(layers) == rng.integers(0, layers), per)
        instances.append((rng.random(len(sizes)) + 1e-6, sizes, float(rng.uniform(0, 1) * sizes.sum()), must))
    assert all(len(v) > EXACT_SEARCH_ITEMS for v, *_ in instances)
    with monkeypatch.context() as m:
        m.setattr(trainable, "GROUPED_SEARCH_CHOICES", 0)
        exact = [_knapsack(*case) for case in instances]  # by milp
    monkeypatch.setattr(trainable, "milp", lambda *a, **k: pytest.fail("milp was called"))
    for (values, sizes, cap, must), want in zip(instances, exact, strict=True):
        got = _knapsack(values, sizes, cap, must)
        assert (got is None) == (want is None)
        if got is not None:
            assert sizes[got].sum() <= cap * (1 + 1e-9) and (must is None or must[got].any())
            assert values[got].sum() == pytest.approx(values[want].sum(), rel=1e-9)


def _kept_bytes(model, spec, plan, layers, x, y) -> tuple[int, int]:
    """Bytes one training step keeps beyond the weights: tensors autograd saves for backward (not the
    parameters themselves), and the gradients and momentum of what the optimizer holds; and, of the
    saved tensors, the whole-tensor copies of sliced parameters (same shape as one)."""
    saved: dict[int, tuple[int, tuple]] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), tuple(t.shape))
        return t

    sliced = {tuple(p.shape) for n, p in model.named_parameters()
              if trainable_slices(model, layers, spec, plan).get(n, None) is not None}
    with module_sparse(model, SparsePlan(layers, spec, plan)) as st:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = torch.nn.functional.cross_entropy(st.suffix(st.prefix(x)), y)
        opt = torch.optim.SGD(st.params, lr=0.01, momentum=0.9)
        loss.backward()
        opt.step()
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        grads = sum(p.grad.nbytes for p in st.params if p.grad is not None)
        momentum = sum(opt.state[p]["momentum_buffer"].nbytes for p in st.params if p in opt.state)
    kept = {ptr: v for ptr, v in saved.items() if ptr not in weights}
    copies = sum(n for n, shape in kept.values() if shape in sliced)
    return sum(n for n, _ in kept.values()) + grads + momentum, copies


@pytest.mark.parametrize("name", ["dense", "late partial", "early partial", "shared partial", "head rows"])
def test_memory_model_bounds_what_a_training_step_keeps(model, name):
    """Saved-for-backward tensors (counted through autograd's hooks), gradients and momentum of one
    step stay within the model's non-weight terms plus the classifier's own activations, which
    the model leaves out (a pooled vector and the logits per sample); the whole-tensor copies of
    sliced parameters are real and within the slice-copy term."""
    spec = SubModelSpec(model_id=model.model_id, groups=[(0, 1, 2), (1, 3), (0, 1), (0, 1, 2, 3), (0, 3), (1, 2),
                                                         (0, 2, 3), (0, 1, 2, 3)])
    plans = {
        "dense": TrainableSpec.dense(spec),
        "late partial": TrainableSpec(groups=[()] * 6 + [(0, 2), (1,)], head_rows=(2, 5)),
        "early partial": TrainableSpec(groups=[(0,), (3,), (), (1, 2), (), (), (), ()], head_rows=(2, 5)),
        "shared partial": TrainableSpec(groups=[(0, 1), (), (0,), (), (3,), (), (), (0, 1, 2, 3)], head_rows=(2, 5),
                                        shared=True),
        "head rows": TrainableSpec(groups=[()] * 8, head_rows=(2, 5)),
    }
    plan = plans[name]
    batch = 24
    mem = training_memory_model(model.backbone, batch=batch)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(batch, 3, 16, 16, generator=gen), torch.tensor([2, 5] * 12)
    sub = model.extract(spec)
    sub.train()
    kept, copies = _kept_bytes(sub, spec, plan, model.layers, x, y)
    parts = mem.breakdown(model.costs(), spec, plan)
    classifier_activations = batch * 4 * (mem.head_row_params - 1 + mem.num_classes)
    assert kept <= parts["total"] - parts["weights"] + classifier_activations
    assert copies <= parts["slice_copies"]
    if name in ("early partial", "late partial", "shared partial"):
        assert copies > 0


def test_frozen_stage_outputs_are_kept_only_within_the_cache_limit(model):
    spec = SubModelSpec(model_id=model.model_id, groups=[(0, 1)] * 8)
    plan = TrainableSpec(groups=[()] * 5 + [(1,), (0, 1), ()], head_rows=(0, 3))
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(40, 3, 16, 16, generator=gen), torch.tensor([0, 3] * 20)
    runs = {}
    for limit in (None, 1e9, 0.0):
        sub = model.extract(spec)
        replay = ReplayBuffer(30, seed=0)
        replay.add(torch.rand(30, 3, 16, 16, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 3] * 15))
        stats = finetune(sub, x, y, epochs=2, lr=0.05, batch_size=8, replay=replay, replay_ratio=0.5,
                         generator=torch.Generator().manual_seed(4), sparse=SparsePlan(model.layers, spec, plan),
                         cache_limit=limit)
        runs[limit] = (stats, sub.state_dict())
    assert runs[None][0].prefix_cached and runs[1e9][0].prefix_cached and runs[0.0][0].prefix_cached is False
    cached, recomputed = runs[None][1], runs[0.0][1]
    assert cached.keys() == recomputed.keys()
    for key in cached:  # the same batches and draws: only where the frozen stages run differs
        torch.testing.assert_close(recomputed[key], cached[key], rtol=1e-4, atol=1e-5)
    assert runs[None][0].batches == runs[0.0][0].batches
