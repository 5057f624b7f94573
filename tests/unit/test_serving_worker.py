"""Stage workers rebuilt from architecture + safetensors weights compose to the served model (no Ray)."""

import pytest
import torch

from eclm.modules import SubModelSpec, modularize, pack_state
from eclm.serving import (
    ModelSource,
    NodePacer,
    NodeProfile,
    NodeSettings,
    ServingConfig,
    StageWorker,
    build_chain,
    build_problem,
    decode,
    encode,
    make_plan,
    routes_for,
)

MODELS = {
    "resnet": dict(name="resnet18", size=(3, 16, 16), kwargs={"channels": [8, 16, 16, 32]}),
    "mobilenet": dict(name="mobilenetv3_small_050", size=(3, 32, 32), kwargs={}),
}


@pytest.fixture(scope="module")
def modular():
    cache = {}

    def get(key):
        if key not in cache:
            m = MODELS[key]
            torch.manual_seed(0)
            cache[key] = modularize(m["name"], modules_per_layer=2, input_size=m["size"], num_classes=5,
                                    **m["kwargs"]).eval()
        return cache[key]
    return get


def settings(node=0, share=1.0, **kw):
    return NodeSettings(node=node, cpu_share=share, link_bandwidth=1e9, link_latency=0.0,
                        monitor_interval_s=1e-6, **kw)


def workers_for(source, boundaries, sleep=lambda s: None):
    out = []
    for i in range(len(boundaries) - 1):
        w = StageWorker(settings(i), sleep=sleep)
        w.load(source.architecture(), source.payload, boundaries[i], boundaries[i + 1])
        out.append(w)
    return out


def run(workers, x):
    message = encode(x)
    for w in workers:
        if w.blocks:
            message = w.forward(message, {"batch_id": 0, "hops_out": 0})
    return decode(message)


@pytest.mark.parametrize("family", ["resnet", "mobilenet"])
@pytest.mark.parametrize("cut", [(0.0, 0.5), (0.2, 0.9), (0.0, 0.0), (1 / 3, 2 / 3)])
def test_stages_compose_to_the_full_model(modular, family, cut):
    m = modular(family)
    source = ModelSource.from_modular(m)
    n = len(build_chain(source.architecture(), source.payload))
    a, b = int(cut[0] * n), int(cut[1] * n)
    x = torch.randn(3, *MODELS[family]["size"])
    out = run(workers_for(source, (0, a, max(a, b), n)), x)
    with torch.no_grad():
        ref = m.extract(m.full_spec()).eval()(x)
    assert torch.allclose(out, ref, atol=1e-5)


def test_a_derived_sub_model_is_served_exactly(modular):
    m = modular("resnet")
    spec = SubModelSpec(model_id=m.model_id, groups=[(0,) if i % 2 else (0, 1) for i in range(len(m.layers))])
    source = ModelSource.from_modular(m, spec, name="device")
    full_source = ModelSource.from_modular(m)
    x = torch.randn(2, *MODELS["resnet"]["size"])
    workers = workers_for(source, (0, 3, len(build_chain(source.architecture(), source.payload))))
    out = run(workers, x)
    with torch.no_grad():
        ref = m.extract(spec).eval()(x)
    assert torch.allclose(out, ref, atol=1e-5)
    # Genuinely the narrower sub-model: its stages hold fewer weights than the full model's.
    full_bytes = sum(w.status()["held_bytes"] for w in workers_for(full_source, (0, 3, len(m.chain()))))
    assert sum(w.status()["held_bytes"] for w in workers) < full_bytes


def test_worker_keeps_only_its_blocks_and_keep_narrows(modular):
    source = ModelSource.from_modular(modular("resnet"))
    w = StageWorker(settings())
    full = w.load(source.architecture(), source.payload)
    assert (full["start"], full["stop"]) == (0, full["n_chain"])
    part = w.keep(2, 5)
    assert (part["start"], part["stop"]) == (2, 5) and part["held_bytes"] < full["held_bytes"]
    with pytest.raises(ValueError, match="holds"):
        w.keep(1, 4)
    with pytest.raises(ValueError, match="outside"):
        w.load(source.architecture(), source.payload, 3, full["n_chain"] + 1)


def test_profile_feeds_a_partition_plan_whose_routes_serve_exactly(modular):
    m = modular("mobilenet")
    source = ModelSource.from_modular(m)
    cfg = ServingConfig(node_cpu_shares=[1.0, 0.5, 0.25], node_memory_bytes=None, link_bandwidth_bytes_per_s=1e9,
                        micro_batch_size=2)
    workers = [StageWorker(NodeSettings.from_config(cfg, i), sleep=lambda s: None) for i in range(3)]
    for w in workers:
        w.load(source.architecture(), source.payload)
    profiles = [NodeProfile.from_dict(w.profile(2, repeats=2)) for w in workers]
    n = len(profiles[0].block_seconds)
    assert all(len(p.activation_bytes) == n and min(p.block_memory) >= 0 for p in profiles)
    # Emulated seconds scale with 1 / share: the 0.25-share node is slower than the 1.0 node.
    assert sum(profiles[2].block_seconds) > sum(profiles[0].block_seconds)
    plan = make_plan(build_problem(profiles, cfg), cfg)
    for i, w in enumerate(workers):
        w.keep(plan.boundaries[i], plan.boundaries[i + 1])
    x0 = torch.randn(2, *MODELS["mobilenet"]["size"])
    message = encode(x0)
    for r in routes_for(plan):
        run_hop = workers[r.node].relay if r.is_relay else workers[r.node].forward
        message = run_hop(message, {"batch_id": 1, "hops_out": r.hops_out, "codec": r.codec})
        timing = message.timings[-1]
        assert (timing["start"], timing["stop"]) == (r.start, r.stop) and len(timing["block_s"]) == r.stop - r.start
    assert len(message.timings) == len(routes_for(plan))  # every hop's timing travels with the batch
    with torch.no_grad():
        ref = m.extract(m.full_spec()).eval()(x0)
    assert torch.allclose(decode(message), ref, atol=1e-5)


def test_monitor_skips_warmup_and_reports_a_slowdown(modular):
    source = ModelSource.from_modular(modular("resnet"))
    w = StageWorker(settings(monitor_threshold=0.5, monitor_alpha=1.0), sleep=lambda s: None)
    w.load(source.architecture(), source.payload)
    x = torch.randn(1, *MODELS["resnet"]["size"])
    flags = [w.forward(encode(x), {"batch_id": k}).timings[-1]["monitored"] for k in range(4)]
    assert flags == [False, False, True, True]
    w.set_cpu_share(0.05)
    events = w.forward(encode(x), {"batch_id": 10}).timings[-1]["events"]
    slowed = [e for e in events if e["quantity"].startswith("block_latency")]
    # A twentieth of the speed: the total of the reported block latencies rises many-fold.
    assert slowed and sum(e["current"] for e in slowed) > 5 * sum(e["previous"] for e in slowed)
    assert w.status()["cpu_share"] == 0.05


def test_pacing_sleeps_to_the_emulated_duration(modular):
    source = ModelSource.from_modular(modular("resnet"))
    slept = []
    w = StageWorker(settings(share=0.1), sleep=slept.append)
    w.load(source.architecture(), source.payload)
    timing = w.forward(encode(torch.randn(1, *MODELS["resnet"]["size"])), {"batch_id": 0}).timings[-1]
    # A tenth of a core: the node needs 10x the CPU time; the stage sleeps whatever of that the
    # host did not already spend (the fake sleep returns at once, so wall_s excludes it).
    assert timing["compute_s"] == pytest.approx(timing["cpu_s"] / 0.1)
    assert sum(slept) == pytest.approx(timing["slept_s"]) and sum(slept) <= timing["compute_s"]
    assert sum(slept) + timing["wall_s"] >= timing["compute_s"]  # paced to the deadline start + compute


def test_bad_payloads_and_idle_forward_raise(modular):
    m = modular("resnet")
    source = ModelSource.from_modular(m)
    no_spec = pack_state(m.extract(m.full_spec()).state_dict())
    w = StageWorker(settings())
    with pytest.raises(ValueError, match="spec"):
        w.load(source.architecture(), no_spec)
    with pytest.raises(ValueError, match="architecture lacks"):
        w.load({"arch": source.arch}, source.payload)
    w.load(source.architecture(), source.payload, 2, 2)
    with pytest.raises(RuntimeError, match="no blocks"):
        w.forward(encode(torch.zeros(1, 3, 16, 16)), {"batch_id": 0})
    with pytest.raises(RuntimeError):
        w.profile(1)


@pytest.mark.parametrize("kwargs,match", [(dict(arch={}), "arch"), (dict(input_size=(3, 0, 8)), "input_size"),
                                          (dict(payload=b""), "payload")])
def test_model_source_validates(kwargs, match):
    args = dict(arch={"name": "resnet18"}, modules_per_layer=2, input_size=(3, 8, 8), payload=b"x") | kwargs
    with pytest.raises(ValueError, match=match):
        ModelSource(**args)


@pytest.mark.parametrize("overlap", [False, True])
def test_relay_forwards_the_input_and_pays_only_the_link(overlap):
    slept = []
    w = StageWorker(NodeSettings(node=0, cpu_share=1.0, link_bandwidth=1e6, link_latency=0.001, overlap=overlap),
                    sleep=slept.append)
    x = torch.zeros(2, 3, 8, 8)  # 1536 bytes
    sent = encode(x)
    message = w.relay(sent, {"batch_id": 3, "hops_out": 2})
    timing = message.timings[-1]
    assert message is sent and timing["compute_s"] == 0.0 and timing["batch_id"] == 3
    assert timing["link_s"] == pytest.approx(2 * (0.001 + 1536 / 1e6))
    if overlap:
        # Asynchronous hand-off: the node does not wait for its link; the message carries the
        # time the link delivers it, one transfer after it was sent.
        assert not slept and message.arrive_at == pytest.approx(timing["finished_at"] + timing["link_s"], abs=0.05)
    else:
        assert slept and sum(slept) <= timing["link_s"] + 1e-9 and message.arrive_at == 0.0
    # With a codec on the ticket the entry node re-encodes the input: half the bytes, half the link.
    half = w.relay(encode(x), {"batch_id": 4, "hops_out": 2, "codec": "float16"})
    assert half.codec == "float16" and half.nbytes == 768 and torch.equal(decode(half), x)
    assert half.timings[-1]["link_s"] == pytest.approx(2 * (0.001 + 768 / 1e6))


def test_overlapped_link_is_a_fifo_and_the_receiver_waits_for_arrival():
    clock = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds

    def worker(node):
        w = StageWorker(NodeSettings(node=node, cpu_share=1.0, link_bandwidth=1e3, link_latency=0.0))
        w.pacer = NodePacer(1.0, 1e3, 0.0, overlap=True, sleep=sleep, clock=lambda: clock[0])
        return w

    sender = worker(0)
    x = torch.zeros(1, 50)  # 200 bytes: 0.2 s on a 1 kB/s link
    first = sender.relay(encode(x), {"batch_id": 0, "hops_out": 1})
    second = sender.relay(encode(x), {"batch_id": 1, "hops_out": 1})
    # Both leave at t=100 without the sender sleeping; the second queues behind the first.
    assert not slept
    assert first.arrive_at == pytest.approx(100.2) and second.arrive_at == pytest.approx(100.4)
    out = worker(1).relay(second, {"batch_id": 1, "hops_out": 0})
    assert out.timings[-1]["wait_s"] == pytest.approx(0.4) and clock[0] == pytest.approx(100.4)


def test_a_skeleton_is_rebuilt_once_per_architecture_whatever_its_key_order(modular):
    from eclm.serving import model_source

    source = ModelSource.from_modular(modular("resnet"))
    arch = source.architecture()
    reordered = {k: arch[k] for k in reversed(list(arch))} | {"input_size": tuple(arch["input_size"])}
    first = model_source._skeleton_of(arch)
    assert model_source._skeleton_of(reordered) is first  # the same description, the same skeleton
    other = dict(arch, selector_width=arch["selector_width"] + 8)
    assert model_source._skeleton_of(other) is not first
    assert arch == source.architecture()  # the caller's description is left as it was
