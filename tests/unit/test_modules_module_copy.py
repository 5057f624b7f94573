"""copy_module: the deepcopy of a module tree, built directly; sub-models rebuilt from shared structures."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from eclm.modules import ModularModel, SubModelSpec, modularize, rebuild_submodel, skeleton
from eclm.modules.modular import submodel_structure
from eclm.modules.module_copy import copy_module

MODELS = {
    "resnet18": ("resnet18", {"channels": (16, 32, 64, 128)}),
    "vit": ("test_vit", {"img_size": 32}),
    "mobilenetv3": ("mobilenetv3_small_050", {}),
}


@pytest.fixture(scope="module", params=list(MODELS))
def modular(request) -> ModularModel:
    torch.manual_seed(0)
    name, kwargs = MODELS[request.param]
    return modularize(name, modules_per_layer=4, num_classes=10, **kwargs)


def _spec(modular: ModularModel, *keep: int) -> SubModelSpec:
    """Every layer keeps modules ``keep`` (modulo its module count)."""
    groups = [tuple(sorted({k % layer.n_modules for k in keep})) for layer in modular.layers]
    return SubModelSpec(model_id=modular.model_id, groups=groups)


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return list(module.parameters()) + list(module.buffers())


def test_clone_is_what_deepcopy_makes(modular: ModularModel) -> None:
    model = modular.extract(modular.full_spec()).train()
    ours, theirs = copy_module(model), copy.deepcopy(model)
    assert [(n, type(m)) for n, m in ours.named_modules()] == [(n, type(m)) for n, m in theirs.named_modules()]
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert [(n, type(p), p.requires_grad) for n, p in ours.named_parameters()] == [
        (n, type(p), p.requires_grad) for n, p in theirs.named_parameters()]
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    out_ours = ours(x)
    torch.manual_seed(1)
    assert torch.equal(out_ours, theirs(x))  # training mode: norm statistics move identically
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_clone_shares_nothing_with_the_original(modular: ModularModel) -> None:
    model = modular.extract(modular.full_spec())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone = copy_module(model)
    assert not {t.data_ptr() for t in _tensors(clone)} & {t.data_ptr() for t in _tensors(model)}
    with torch.no_grad():
        for t in _tensors(clone):
            t.add_(1) if t.is_floating_point() else t.add_(3)
    clone.head = nn.Identity() if hasattr(clone, "head") else None
    next(iter(clone.modules())).register_forward_hook(lambda *_: None)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
    assert model.state_dict().keys() == before.keys()


def test_tied_tensors_stay_tied_and_bound_methods_follow_the_copy() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
            self.b.weight = self.a.weight  # one parameter, two modules
            self.shared = self.a  # one module reachable twice
            self.scale = torch.tensor(2.0)  # a plain tensor attribute
            self.act = self.double  # a method of this module kept as an attribute

        def double(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.b(self.a(x)))

    model = Tied()
    clone = copy_module(model)
    assert clone.a.weight is clone.b.weight and clone.shared is clone.a
    assert clone.a.weight is not model.a.weight and clone.scale is not model.scale
    assert clone.act.__self__ is clone
    x = torch.randn(2, 3)
    assert torch.equal(clone(x), model(x))
    with torch.no_grad():
        clone.scale.fill_(3.0)
    assert float(model.scale) == 2.0 and torch.allclose(clone(x), model(x) * 1.5)
    assert sum(1 for _ in clone.parameters()) == sum(1 for _ in model.parameters())


def test_shared_copy_holds_the_same_tensors_in_its_own_dictionaries(modular: ModularModel) -> None:
    model = modular.extract(modular.full_spec())
    shared = copy_module(model, tensors="share")
    assert all(a is b for a, b in zip(_tensors(shared), _tensors(model), strict=True))
    name, param = next(iter(shared.named_parameters()))
    owner, attr = (shared.get_submodule(name.rpartition(".")[0]) if "." in name else shared), name.rpartition(".")[2]
    setattr(owner, attr, nn.Parameter(torch.zeros_like(param)))
    assert dict(model.named_parameters())[name] is param  # the original keeps its parameter


def test_unknown_tensor_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="tensors"):
        copy_module(nn.Linear(2, 2), tensors="move")  # type: ignore[arg-type]


def test_rebuilt_submodels_of_one_spec_share_only_their_structure(modular: ModularModel) -> None:
    skel = skeleton(modular.arch, 4)
    spec = _spec(modular, 0, 3)
    state = modular.extract(spec).state_dict()
    one = rebuild_submodel(skel, spec, {k: v.clone() for k, v in state.items()}).train()
    two = rebuild_submodel(skel, spec, {k: v.clone() for k, v in state.items()}).train()
    assert submodel_structure(skel, spec) is submodel_structure(skel, spec)  # narrowed once
    assert not {t.data_ptr() for t in _tensors(one)} & {t.data_ptr() for t in _tensors(two)}
    assert not {id(m) for m in one.modules()} & {id(m) for m in two.modules()}
    opt = torch.optim.SGD(one.parameters(), lr=0.1)
    loss = one(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    x = torch.randn(3, 3, 32, 32)
    fresh = modular.extract(spec).eval()
    with torch.no_grad():
        assert torch.equal(two.eval()(x), fresh(x))  # training one changed nothing of the other
        assert not torch.equal(one.eval()(x), fresh(x))
    assert all(t.is_meta for t in _tensors(submodel_structure(skel, spec)))


def test_structures_kept_per_skeleton_are_bounded(modular: ModularModel) -> None:
    from eclm.modules import modular as modular_module

    skel = skeleton(modular.arch, 4)
    specs = [_spec(modular, i) for i in range(4)] + [_spec(modular, 0, i) for i in range(1, 4)]
    limit = modular_module._STRUCTURES_PER_SKELETON
    modular_module._STRUCTURES_PER_SKELETON = 3
    try:
        for spec in specs:
            submodel_structure(skel, spec)
        assert len(modular_module._STRUCTURES[skel]._modules) == 3
        submodel_structure(skel, specs[-3])  # used again: now the most recent
        last_used = list(reversed(dict.fromkeys(reversed([*specs, specs[-3]]))))
        assert list(modular_module._STRUCTURES[skel]._modules) == last_used[-3:]
    finally:
        modular_module._STRUCTURES_PER_SKELETON = limit


def test_a_model_with_weights_is_not_kept_as_a_structure(modular: ModularModel) -> None:
    from eclm.modules import modular as modular_module

    spec = _spec(modular, 1, 2)
    state = {k: v.clone() for k, v in modular.extract(spec).state_dict().items()}
    sub = rebuild_submodel(modular, spec, state)  # works on the cloud model too
    assert modular not in modular_module._STRUCTURES
    assert all(a.data_ptr() == state[k].data_ptr() for k, a in sub.state_dict().items())  # assigned
