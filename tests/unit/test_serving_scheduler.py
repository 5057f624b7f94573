"""Request schedulers: AMP4EC filters and score, tie-breaking, baselines, bookkeeping."""

import pytest

from eclm.serving import (
    Amp4ecScheduler,
    LeastLoadedScheduler,
    NodeState,
    NoEligibleNodeError,
    RoundRobinScheduler,
    create_scheduler,
)


def node(node_id="n", **kw) -> NodeState:
    base = dict(cpu_avail=1.0, mem_avail=1024.0, cpu_need=0.5, mem_need=256.0, load=0.2, latency=0.01)
    base.update(kw)
    return NodeState(node_id, **base)


@pytest.mark.parametrize("bad,reason", [
    (dict(load=0.81), "load"),
    (dict(latency=0.6), "latency"),
    (dict(cpu_avail=0.4), "cpu_avail"),
    (dict(mem_avail=100.0), "mem_avail"),
])
def test_filters_skip_the_failing_node_even_if_it_scores_higher(bad, reason):
    sched = Amp4ecScheduler(max_latency=0.5)
    # The bad node has far more resources, so it would win on score if it were not filtered.
    strong = node("bad", **{**dict(cpu_avail=8.0, mem_avail=8192.0), **bad})
    weak = node("ok", load=0.7, task_count=3)
    assert sched.rejection_reason(strong).startswith(reason)
    assert sched.rejection_reason(weak) is None
    assert sched.choose([strong, weak]) == 1


def test_load_exactly_at_threshold_is_eligible():
    assert Amp4ecScheduler(max_load=0.8).rejection_reason(node(load=0.8)) is None


def test_latency_threshold_is_configurable():
    n = node(latency=0.2)
    assert Amp4ecScheduler(max_latency=0.5).rejection_reason(n) is None
    assert Amp4ecScheduler(max_latency=0.1).rejection_reason(n) is not None


def test_no_eligible_node_returns_none_and_require_raises():
    sched = Amp4ecScheduler()
    states = [node("a", load=0.9), node("b", cpu_avail=0.1)]
    assert sched.choose(states) is None
    with pytest.raises(NoEligibleNodeError, match="a"):
        sched.require(states)


def test_score_matches_hand_computed_example():
    state = node(cpu_avail=1.0, cpu_need=0.5, mem_avail=512.0, mem_need=256.0, load=0.3,
                 exec_history=(1.0, 3.0), task_count=2)
    s = Amp4ecScheduler.score(state)
    # S_R = 0.5*2 + 0.5*2 = 2; S_L = 0.7; S_P = 1/(1+2) ; S_B = 1/(1+4)
    assert (s.resources, s.load, s.performance, s.balance) == pytest.approx((2.0, 0.7, 1 / 3, 1 / 5))
    assert s.total == pytest.approx(0.2 * 2.0 + 0.2 * 0.7 + 0.1 / 3 + 0.5 / 5)


def test_performance_term_without_history_is_one_half():
    assert Amp4ecScheduler.score(node(exec_history=())).performance == 0.5


def test_highest_score_wins():
    states = [node("busy", task_count=2), node("idle", task_count=0), node("slow", exec_history=(5.0,))]
    scores = [Amp4ecScheduler.score(s).total for s in states]
    assert Amp4ecScheduler().choose(states) == scores.index(max(scores)) == 1


def test_tie_breaking_is_seeded_and_only_among_tied_nodes():
    states = [node("a"), node("b"), node("c", load=0.5)]  # a and b tie, c scores lower
    s1, s2, other = Amp4ecScheduler(seed=42), Amp4ecScheduler(seed=42), Amp4ecScheduler(seed=43)
    seq1 = [s1.choose(states) for _ in range(40)]
    assert seq1 == [s2.choose(states) for _ in range(40)]
    assert set(seq1) == {0, 1}
    assert [other.choose(states) for _ in range(40)] != seq1


def test_round_robin_cycles():
    sched = RoundRobinScheduler()
    states = [node("a"), node("b"), node("c")]
    assert [sched.choose(states) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("loads,tasks,expected", [
    ([0.5, 0.1, 0.3], [0, 0, 0], 1),
    ([0.2, 0.2, 0.9], [3, 1, 0], 1),  # tie on load: fewer tasks in flight
    ([0.95, 0.99], [0, 0], 0),        # no filter: an overloaded node can still be least loaded
])
def test_least_loaded_picks_min(loads, tasks, expected):
    states = [node(str(i), load=lo, task_count=t) for i, (lo, t) in enumerate(zip(loads, tasks, strict=True))]
    assert LeastLoadedScheduler().choose(states) == expected


def test_bookkeeping_flows_into_states_and_spreads_amp4ec_choices():
    sched = Amp4ecScheduler(seed=0)
    base = [node("a"), node("b")]
    first = sched.choose(sched.with_bookkeeping(base))
    sched.on_start(base[first].node_id)
    second = sched.choose(sched.with_bookkeeping(base))
    assert second != first  # S_B penalises the node already running a task
    sched.on_finish(base[first].node_id, 0.25)
    annotated = sched.with_bookkeeping(base)
    assert annotated[first].task_count == 0 and annotated[first].exec_history == (0.25,)


def test_history_window_bounds_the_ledger():
    sched = RoundRobinScheduler(history_window=3)
    for t in range(5):
        sched.on_start("a")
        sched.on_finish("a", float(t))
    assert sched.exec_history("a") == (2.0, 3.0, 4.0)


def test_bookkeeping_errors():
    sched = LeastLoadedScheduler()
    with pytest.raises(ValueError, match="on_start"):
        sched.on_finish("x", 0.1)
    sched.on_start("x")
    with pytest.raises(ValueError, match="exec_seconds"):
        sched.on_finish("x", -1.0)


@pytest.mark.parametrize("kwargs,field", [
    (dict(load=1.2), "load"), (dict(cpu_need=0.0), "cpu_need"), (dict(mem_avail=-1.0), "mem_avail"),
    (dict(task_count=-1), "task_count"), (dict(exec_history=(1.0, -2.0)), "exec_history"),
])
def test_node_state_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        node(**kwargs)


def test_choose_input_errors():
    with pytest.raises(ValueError, match="candidates"):
        RoundRobinScheduler().choose([])
    with pytest.raises(TypeError, match="NodeState"):
        LeastLoadedScheduler().choose([{"load": 0.1}])


@pytest.mark.parametrize("name,cls", [("amp4ec", Amp4ecScheduler), ("round_robin", RoundRobinScheduler),
                                      ("least_loaded", LeastLoadedScheduler)])
def test_create_scheduler(name, cls):
    assert type(create_scheduler(name)) is cls


def test_create_scheduler_unknown_name():
    with pytest.raises(ValueError, match="scheduler"):
        create_scheduler("random")
