"""Stage cutting, block profiling, and in-process pipelines equal the unsplit model."""

import itertools

import pytest
import torch
from torch import nn

from eclm.serving import (
    PartitionProblem,
    as_blocks,
    block_memory_bytes,
    dp_partition,
    evaluate_plan,
    measure_block_latencies,
    payload_nbytes,
    run_pipeline_inprocess,
    split_into_stages,
)


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def problem_for(n_nodes: int, n_blocks: int) -> PartitionProblem:
    return PartitionProblem([[1.0] * n_blocks] * n_nodes, [1.0] * n_blocks, 1.0,
                            [1e6] * (n_nodes - 1), [0.0] * (n_nodes - 1))


def all_boundaries(n_nodes: int, n_blocks: int):
    for cuts in itertools.combinations_with_replacement(range(n_blocks + 1), n_nodes - 1):
        yield (0, *cuts, n_blocks)


@pytest.mark.parametrize("n_nodes", [1, 2, 3])
def test_composed_stages_equal_unsplit_model_exactly(n_nodes):
    torch.set_num_threads(1)
    model = tiny_cnn().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    problem = problem_for(n_nodes, len(model))
    for bounds in all_boundaries(n_nodes, len(model)):
        plan = evaluate_plan(problem, bounds)
        stages = split_into_stages(model, plan)
        assert len(stages) == len(plan.stages)
        assert torch.equal(run_pipeline_inprocess(stages, x), expected)


def test_copied_stages_share_no_parameters_but_compute_the_same():
    model = tiny_cnn().eval()
    plan = evaluate_plan(problem_for(2, len(model)), (0, 3, len(model)))
    shared = split_into_stages(model, plan)
    copied = split_into_stages(model, plan, copy_modules=True)
    model_ptrs = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for s in shared for p in s.parameters()} <= model_ptrs
    assert not ({p.data_ptr() for s in copied for p in s.parameters()} & model_ptrs)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(run_pipeline_inprocess(shared, x), run_pipeline_inprocess(copied, x))


def test_measure_block_latencies_reports_cut_sizes_and_leaves_model_untouched():
    torch.set_num_threads(1)
    model = tiny_cnn().train()
    stats_before = model[1].running_mean.clone()
    x = torch.randn(2, 3, 8, 8)
    profile = measure_block_latencies(model, x, repeats=2)
    assert len(profile.block_seconds) == len(model) and all(t >= 0 for t in profile.block_seconds)
    assert profile.input_bytes == x.numel() * 4
    with torch.no_grad():
        h, sizes = x, []
        for block in model.eval():
            h = block(h)
            sizes.append(h.numel() * h.element_size())
    model.train()
    assert list(profile.activation_bytes) == sizes
    assert list(profile.block_memory) == block_memory_bytes(list(model))
    assert all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, stats_before)


def test_block_memory_counts_parameters_and_buffers():
    bn = nn.BatchNorm2d(4)  # weight, bias, running_mean, running_var (float32) + num_batches_tracked (int64)
    assert block_memory_bytes([bn, nn.ReLU()]) == [4 * 4 * 4 + 8, 0]


def test_payload_nbytes_nested():
    t = torch.zeros(3, dtype=torch.float64)
    assert payload_nbytes({"a": t, "b": [t, (t, "meta")]}) == 3 * 24


def test_profile_to_plan_to_pipeline_end_to_end():
    torch.set_num_threads(1)
    model = tiny_cnn().eval()
    x = torch.randn(1, 3, 8, 8)
    prof = measure_block_latencies(model, x, repeats=1, warmup=0)
    problem = PartitionProblem.from_speeds(prof.block_seconds, [1.0, 0.6, 0.4], prof.activation_bytes,
                                           prof.input_bytes, [1e9, 1e9], [0.0, 0.0], prof.block_memory)
    plan = dp_partition(problem)
    with torch.no_grad():
        assert torch.equal(run_pipeline_inprocess(split_into_stages(model, plan), x), model(x))


def test_bad_inputs():
    model = tiny_cnn()
    with pytest.raises(ValueError, match="plan covers"):
        split_into_stages(model, evaluate_plan(problem_for(2, 3), (0, 1, 3)))
    with pytest.raises(TypeError, match="block 1"):
        as_blocks([nn.ReLU(), "relu"])
    with pytest.raises(TypeError, match="model"):
        as_blocks(nn.ReLU())
    with pytest.raises(ValueError, match="at least one"):
        as_blocks(nn.Sequential())
    with pytest.raises(ValueError, match="repeats"):
        measure_block_latencies(model, torch.randn(1, 3, 8, 8), repeats=0)
    with pytest.raises(ValueError, match="stages"):
        run_pipeline_inprocess([], torch.zeros(1))
