"""Split execution and the split-learning protocol of the platform, in-process (no Ray).

Chain cuts of extracted sub-models, measured block costs, device parts built from a weightless
skeleton, one step of the device/server message protocol against SGD on the composed model (one
device, and mixed cuts sharing server stages), epoch-end aggregation, codec traffic records and the
delay model. Whole rounds through the services are in ``test_split_training.py``.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from eclm.modules import modularize, skeleton
from eclm.modules.costs import measure
from eclm.pipelines.split_cloud import SplitServerSession
from eclm.pipelines.split_edge import (
    SplitDeviceWorker,
    cut_chain,
    pack_smashed,
    segment_state,
    unpack_gradient,
    unpack_smashed,
)
from eclm.pipelines.split_local import emulated_epoch_seconds
from eclm.pipelines.split_planning import measure_block_costs
from eclm.pipelines.split_profile import time_block_costs
from eclm.split import (
    ComputeModel,
    IdentityCodec,
    LinkModel,
    MaskEncodedSparsification,
    OptimizerSettings,
    TopKCodec,
    UniformQuantizationCodec,
)
from eclm.split.config import CodecConfig, SplitConfig
from eclm.split.factory import build_codec, build_sampler, optimizer_settings

torch.set_num_threads(1)
SIZE = (3, 16, 16)
NUM_CLASSES = 6
# ConvNeXt downsamples 32x: it needs 32x32 inputs.
MODELS = {
    "resnet": ("resnet18", SIZE, {"channels": [8, 8, 16, 16]}),
    "convnext": ("convnext_atto", (3, 32, 32), {"dims": (8, 16, 16, 16), "depths": (1, 1, 1, 1)}),
}


def modular(family: str = "resnet"):
    name, size, kwargs = MODELS[family]
    torch.manual_seed(0)
    return modularize(name, modules_per_layer=2, input_size=size, num_classes=NUM_CLASSES, **kwargs).eval()


def client_data(sizes: list[int], seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Client ``k`` holds classes ``3k..3k+2`` (disjoint, non-IID); the class shifts one channel."""
    gen = torch.Generator().manual_seed(seed)
    data = []
    for k, n in enumerate(sizes):
        y = (torch.randint(0, 3, (n,), generator=gen) + 3 * k) % NUM_CLASSES
        x = torch.randn(n, *SIZE, generator=gen)
        x[:, 0] += y[:, None, None].float() / 2
        data.append((x, y))
    return data


def session(model, cuts: list[int], sizes: list[int], config: SplitConfig, codec=None):
    """A server session and its device workers (built from the weightless skeleton)."""
    sub = model.extract(model.full_spec())
    names = [f"dev{k}" for k in range(len(cuts))]
    server = SplitServerSession(sub, model.chain(sub), model.full_spec(), names, cuts,
                                codec or build_codec(config.codec), optimizer_settings(config),
                                build_sampler(config, sizes))
    skel = skeleton(model.arch, 2, SIZE)
    data = client_data(sizes)
    workers = [SplitDeviceWorker.from_payload(n, skel, server.device_payload(n), config, sizes, k, data[k],
                                              data[k])
               for k, n in enumerate(names)]
    return server, workers, data


def one_step(server, workers, epoch: int = 0, step: int = 0) -> list[int]:
    """One global step of the protocol by hand (forward, server step, backward); the active clients."""
    active = [k for k, count in enumerate(server.epoch_plan(epoch)[step]) if count > 0]
    grads = server.server_step(epoch, step, [workers[k].forward(epoch, step) for k in active])
    for k, grad in zip(active, grads, strict=True):
        workers[k].backward(grad)
    return active


def test_split_packages_import_without_ray() -> None:
    code = ("import eclm.pipelines.split_edge, eclm.pipelines.split_cloud, eclm.pipelines.split_planning, eclm.pipelines.split_local, sys; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("narrowed", [False, True])
def test_every_cut_of_a_submodel_composes_to_the_submodel(family: str, narrowed: bool) -> None:
    model = modular(family)
    spec = model.full_spec()
    if narrowed:  # keep one module per layer: a genuinely narrower extracted sub-model
        spec = spec.model_copy(update={"groups": tuple((0,) for _ in spec.groups)})
    sub = model.extract(spec).eval()
    stages = model.chain(sub)
    x = torch.randn(2, *model.input_size)
    with torch.no_grad():
        expected = sub(x)
        for cut in range(1, len(stages) + 1):
            device, cloud = cut_chain(stages, cut)
            torch.testing.assert_close(cloud(device(x)), expected, rtol=0, atol=0)
            device_keys, cloud_keys = set(segment_state(sub, device)), set(segment_state(sub, cloud))
            assert not device_keys & cloud_keys
            assert device_keys | cloud_keys == set(sub.state_dict())


@pytest.mark.parametrize("cut", [0, -1, 11, 2.0, True])
def test_cut_outside_the_chain_is_rejected(cut) -> None:
    model = modular()
    stages = model.chain(model.extract(model.full_spec()))
    with pytest.raises(ValueError, match="cut must be an int in 1..10"):
        cut_chain(stages, cut)


@pytest.mark.parametrize("family", list(MODELS))
def test_block_costs_are_measured_per_chain_stage(family: str) -> None:
    model = modular(family)
    sub = model.extract(model.full_spec())
    stages = model.chain(sub)
    example = torch.zeros(1, *model.input_size)
    costs = measure_block_costs(stages, example)
    whole = measure(sub, example)
    assert costs.num_blocks == len(stages)
    assert costs.activation_bytes[0] == 4 * example.numel()
    assert costs.activation_bytes[-1] == 4 * NUM_CLASSES
    assert sum(costs.forward_flops) == pytest.approx(whole[1], rel=1e-6)
    assert sum(costs.param_bytes) == pytest.approx(12 * whole[0])
    assert sum(costs.state_bytes) == sum(t.numel() * t.element_size() for t in sub.state_dict().values())
    with pytest.raises(ValueError, match="batch size 1"):
        measure_block_costs(stages, torch.zeros(2, *model.input_size))


def test_timed_profile_adds_call_costs_and_leaves_the_model_untouched() -> None:
    model = modular()
    sub = model.extract(model.full_spec()).train()
    stages = model.chain(sub)
    example = torch.zeros(1, *model.input_size)
    costs = measure_block_costs(stages, example)
    before = {k: v.clone() for k, v in sub.state_dict().items()}

    timed = time_block_costs(stages, example, costs, batches=(2, 8), reference_speed=1e9, repeats=2)

    assert all(torch.equal(before[k], v) for k, v in sub.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in sub.parameters())
    assert len(timed.call_flops) == costs.num_blocks and min(timed.call_flops) >= 0
    assert min(timed.forward_flops) >= 0 and sum(timed.forward_flops) + sum(timed.call_flops) > 0
    assert (timed.activation_bytes, timed.param_bytes, timed.state_bytes) == (
        costs.activation_bytes, costs.param_bytes, costs.state_bytes)
    with pytest.raises(ValueError, match="small < large"):
        time_block_costs(stages, example, costs, batches=(8, 8), reference_speed=1e9)


@pytest.mark.parametrize("cut", [1, 4, 10])
def test_planned_exchange_bytes_are_the_tensors_of_the_device_part_payload(cut: int) -> None:
    model = modular()
    server, workers, _ = session(model, [cut], [8], SplitConfig(global_batch=8))
    costs = measure_block_costs(model.chain(server.sub), torch.zeros(1, *model.input_size))

    payload = workers[0].state_payload()

    tensors = sum(t.numel() * t.element_size() for t in server.prefix_state("dev0").values())
    assert costs.exchange_bytes(cut) == tensors
    assert tensors < len(payload) < tensors + 16_384  # the rest is the safetensors header (names, spec)


def test_device_part_holds_weights_only_for_its_stages() -> None:
    model = modular()
    server, workers, _ = session(model, [3], [8], SplitConfig(global_batch=8))
    worker = workers[0]
    device_keys = set(segment_state(worker.sub, worker.prefix))
    floats = {k for k, t in worker.sub.state_dict().items() if t.is_floating_point()}
    on_meta = {k for k, t in worker.sub.state_dict().items() if t.is_meta}
    assert device_keys == set(server.prefix_state("dev0"))
    assert on_meta and on_meta == floats - device_keys  # the cloud part's weights are never allocated


@pytest.mark.parametrize("cut", [1, 4, 10])
def test_single_client_split_step_equals_a_local_step_on_the_composed_model(cut: int) -> None:
    model = modular()
    config = SplitConfig(global_batch=16, lr=0.1, momentum=0.0)
    local = model.extract(model.full_spec()).train()
    server, workers, data = session(model, [cut], [12], config)
    (x, y), worker = data[0], workers[0]

    message = worker.forward(0, 0)
    (grad,) = server.server_step(0, 0, [message])
    worker.backward(grad)
    opt = torch.optim.SGD(local.parameters(), lr=0.1)
    idx = torch.from_numpy(next(iter(worker.sampler.epoch_indices(0)))[0])  # the batch the device drew
    F.cross_entropy(local(x[idx]), y[idx]).backward()
    opt.step()

    split_state = server.sub.state_dict() | segment_state(worker.sub, worker.prefix)
    for key, value in local.state_dict().items():
        torch.testing.assert_close(split_state[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_mixed_cuts_step_equals_sgd_on_the_composed_models_sharing_server_stages() -> None:
    model = modular()
    cuts, sizes = [2, 10, 5], [12, 20, 9]
    config = SplitConfig(global_batch=64, lr=0.05, momentum=0.9)  # one global step holds every sample
    server, workers, data = session(model, cuts, sizes, config)
    ref_sub = copy.deepcopy(server.sub).train()
    ref_stages = model.chain(ref_sub)
    devices = [copy.deepcopy(cut_chain(ref_stages, c)[0]) for c in cuts]  # one prefix copy per device
    (rows,) = server.sampler.epoch_indices(0)

    assert one_step(server, workers) == [0, 1, 2]
    # Reference: one loss over the concatenated logits (one cut group per device here, in client
    # order), one SGD step over every tensor it touched; stages [c, L) are the server's, shared.
    logits = [cut_chain(ref_stages, c)[1](devices[k](data[k][0][torch.from_numpy(rows[k])]))
              for k, c in enumerate(cuts)]
    labels = torch.cat([data[k][1][torch.from_numpy(rows[k])] for k in range(len(cuts))])
    params = {id(p): p for m in [*devices, ref_sub] for p in m.parameters()}
    opt = OptimizerSettings(lr=0.05, momentum=0.9).build(list(params.values()))
    F.cross_entropy(torch.cat(logits), labels).backward()
    opt.step()

    shared = {id(p) for _, stage in ref_stages[min(cuts):] for p in stage.parameters()}
    assert len(server.optimizer.param_groups[0]["params"]) == len(shared)  # each shared stage once
    for worker, device in zip(workers, devices, strict=True):
        for (key, a), b in zip(worker.prefix.state_dict().items(), device.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=key)
    ref_state = ref_sub.state_dict()
    for key in (k for keys in server.stage_keys[min(cuts):] for k in keys):
        torch.testing.assert_close(server.sub.state_dict()[key], ref_state[key], atol=1e-6, rtol=1e-5, msg=key)


def test_epoch_end_aggregation_leaves_one_model_weighted_by_samples() -> None:
    model = modular()
    sizes = [10, 30]
    server, workers, _ = session(model, [2, 5], sizes, SplitConfig(global_batch=40, lr=0.1))
    one_step(server, workers)  # the whole epoch: device parts and the server's copy now differ
    states = [segment_state(w.sub, w.prefix) for w in workers]
    server_before = {k: v.clone() for k, v in server.sub.state_dict().items()}
    key = next(k for k in server.stage_keys[3] if k.endswith("weight"))  # stage 3: device 1 and server
    stem_key = next(k for k in server.stage_keys[0] if k.endswith("weight"))  # stage 0: both devices

    new = server.aggregate({w.name: w.state_payload() for w in workers})

    expected = (sizes[1] * states[1][key] + sizes[0] * server_before[key]) / sum(sizes)
    torch.testing.assert_close(server.sub.state_dict()[key], expected, atol=1e-6, rtol=1e-5)
    expected_stem = (sizes[0] * states[0][stem_key] + sizes[1] * states[1][stem_key]) / sum(sizes)
    torch.testing.assert_close(server.sub.state_dict()[stem_key], expected_stem, atol=1e-6, rtol=1e-5)
    for w in workers:
        w.load(new[w.name])
        for k, v in segment_state(w.sub, w.prefix).items():
            assert torch.equal(v, server.sub.state_dict()[k]), k


@pytest.mark.parametrize("codec", [IdentityCodec(), MaskEncodedSparsification(0.9, 2), TopKCodec(0.75),
                                   UniformQuantizationCodec(4)], ids=lambda c: c.name)
def test_messages_round_trip_and_traffic_uses_the_codecs_exact_sizes(codec) -> None:
    x = torch.relu(torch.randn(5, 4, 3, 3))
    encoded = codec.encode(x)
    decoded_enc, labels, meta = unpack_smashed(pack_smashed(encoded, torch.arange(5), device="a", step=3))
    assert decoded_enc.size_bits == encoded.size_bits and meta["device"] == "a" and meta["step"] == 3
    assert torch.equal(labels, torch.arange(5))
    assert torch.equal(codec.decode(decoded_enc), codec.decode(encoded))

    model = modular()
    config = SplitConfig(global_batch=8, codec=CodecConfig(name=codec.name, **_codec_args(codec)))
    server, workers, data = session(model, [2], [20], config)
    worker, sent = workers[0], []
    encode = worker.codec.encode
    worker.codec.encode = lambda t: sent.append(encode(t)) or sent[-1]  # record what crosses the link
    per_sample = worker.prefix(data[0][0][:1]).numel()

    for step in range(3):
        one_step(server, workers, step=step)

    recorded = worker.epoch_end()["records"]
    assert len(recorded) == len(sent) == 3
    assert [r["bits_up"] for r in recorded] == [e.size_bits for e in sent]
    assert [r["bits_down"] for r in recorded] == [32 * per_sample * r["samples"] for r in recorded]
    assert [r["label_bits"] for r in recorded] == [64 * r["samples"] for r in recorded]


def _codec_args(codec) -> dict:
    return {k: getattr(codec, k) for k in ("ratio", "bits") if hasattr(codec, k)}


def test_server_rejects_messages_that_do_not_fit_the_step() -> None:
    model = modular()
    server, workers, _ = session(model, [2], [8], SplitConfig(global_batch=8))
    message = workers[0].forward(0, 0)
    with pytest.raises(ValueError, match="does not fit step"):
        server.server_step(0, 1, [message])
    with pytest.raises(ValueError, match="does not fit step"):
        server.server_step(0, 0, [message, message])
    (grad,) = server.server_step(0, 0, [message])
    assert unpack_gradient(grad)[1]["step"] == 0
    with pytest.raises(RuntimeError, match="never received its gradient"):
        workers[0].forward(0, 0)


def test_worker_rejects_a_gradient_for_another_step() -> None:
    model = modular()
    server, workers, _ = session(model, [2, 2], [8, 8], SplitConfig(global_batch=16))
    messages = [w.forward(0, 0) for w in workers]
    grads = server.server_step(0, 0, messages)
    with pytest.raises(ValueError, match="does not match pending step"):
        workers[0].backward(_regrad(grads[0], step=5))
    with pytest.raises(ValueError, match="does not match pending step"):
        workers[0].backward(grads[1])  # dev1's gradient
    workers[0].backward(grads[0])
    with pytest.raises(RuntimeError, match="no step is pending"):
        workers[0].backward(grads[0])


def _regrad(message: bytes, step: int) -> bytes:
    from eclm.pipelines.split_edge import pack_gradient

    grad, meta = unpack_gradient(message)
    return pack_gradient(grad, **dict(meta, step=step))


def test_emulated_epoch_time_follows_the_delay_model() -> None:
    devices = {
        "slow": [{"epoch": 0, "step": 0, "forward_s": 0.1, "backward_s": 0.2, "bits_up": 8000,
                  "label_bits": 0, "bits_down": 16000, "samples": 1}],
        "fast": [{"epoch": 0, "step": 0, "forward_s": 0.1, "backward_s": 0.1, "bits_up": 80, "label_bits": 0,
                  "bits_down": 80, "samples": 1},
                 {"epoch": 0, "step": 1, "forward_s": 0.2, "backward_s": 0.1, "bits_up": 0, "label_bits": 0,
                  "bits_down": 0, "samples": 1}],
    }
    server = [{"epoch": 0, "step": 0, "server_s": 0.5}, {"epoch": 0, "step": 1, "server_s": 0.25}]
    compute = {"slow": ComputeModel(10.0), "fast": ComputeModel(1.0)}
    links = {"slow": LinkModel(1000.0, latency=0.01), "fast": LinkModel(1e6)}

    sync = {"slow": (500.0, 1000.0), "fast": (0.0, 0.0)}
    out = emulated_epoch_seconds(devices, server, compute, links, sync)

    step0 = max(1.0 + 0.01 + 1.0, 0.1 + 10 / 1e6) + 0.5 + max(0.01 + 2.0 + 2.0, 10 / 1e6 + 0.1)
    step1 = 0.2 + 0.25 + 0.1
    assert out["steps_s"] == pytest.approx(step0 + step1)
    assert out["sync_s"] == pytest.approx(0.01 + 0.5 + 0.01 + 1.0)
    assert out["total_s"] == pytest.approx(out["steps_s"] + out["sync_s"])
    assert out["device_compute_s"] == pytest.approx(0.3 + 0.2 + 0.3)
    pooled = emulated_epoch_seconds(devices, server, compute, links, sync, shared_bandwidth=500.0)
    assert pooled["steps_s"] == out["steps_s"]
    assert pooled["sync_s"] == pytest.approx(2 * 0.01 + 500 / 500 + 1000 / 500)
