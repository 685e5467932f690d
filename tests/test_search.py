"""The step-size search logic, driven by simulated outcomes."""

from __future__ import annotations

import pytest

from dissecting_adam.protocol.search import Outcome, Probe, SearchSettings, StepSizeSearch, grid


def test_grid_is_1_3_6_times_powers_of_ten_largest_first():
    assert grid(1e-3, 1.0) == [1.0, 0.6, 0.3, 0.1, 0.06, 0.03, 0.01, 0.006, 0.003, 0.001]
    assert grid(0.05, 0.5, mantissas=(1, 5)) == [0.5, 0.1, 0.05]
    with pytest.raises(ValueError):
        grid(1.0, 0.1)


def run_search(search, simulate, budget=100):
    """Drive the search like the runner does: run next_lr until it says stop."""
    outcomes, order = {}, []
    for _ in range(budget):
        lr = search.next_lr(outcomes)
        if lr is None:
            return outcomes, order, search.select(outcomes)
        outcomes[lr] = simulate(lr)
        order.append(lr)
    raise AssertionError("search did not terminate")


def accuracy_peaked_at(peak, diverge_above):
    def simulate(lr):
        if lr > diverge_above:
            return Outcome("diverged")
        return Outcome("completed", 0.9 - abs(lr - peak))

    return simulate


def test_probe_then_search_downward():
    search = StepSizeSearch(tuple(grid(1e-4, 10.0)), points=4)
    outcomes, order, sel = run_search(search, accuracy_peaked_at(peak=0.3, diverge_above=1.0))
    # probe: 10, 6 and 3 diverge; 1 is the largest stable lr
    assert order[:4] == [10.0, 6.0, 3.0, 1.0]
    assert order[4:] == [0.6, 0.3, 0.1]
    assert sel.lr == 0.3 and not sel.on_lower_edge and sel.tie_with == []
    assert [r[0] for r in sel.ranking][0] == 0.3


def test_winner_on_lower_edge_extends_the_search():
    search = StepSizeSearch(tuple(grid(1e-5, 1.0)), points=3, max_extensions=5)
    _, order, sel = run_search(search, accuracy_peaked_at(peak=0.003, diverge_above=0.5))
    # largest stable 0.3; window 0.3, 0.1, 0.06; then extends 0.03, 0.01, 0.006, 0.003, 0.001
    assert order == [1.0, 0.6, 0.3, 0.1, 0.06, 0.03, 0.01, 0.006, 0.003, 0.001]
    assert sel.lr == 0.003 and not sel.on_lower_edge


def test_extension_limit_is_reported():
    search = StepSizeSearch(tuple(grid(1e-5, 1.0)), points=2, max_extensions=1)
    _, order, sel = run_search(search, accuracy_peaked_at(peak=1e-5, diverge_above=2.0))
    assert order == [1.0, 0.6, 0.3]
    assert sel.lr == 0.3 and sel.on_lower_edge


def test_diverged_runs_inside_the_window_rank_last():
    def simulate(lr):
        if lr == 0.3:
            return Outcome("diverged")  # unstable although a larger lr was stable
        return Outcome("completed", {1.0: 0.5, 0.6: 0.7, 0.1: 0.6}[lr])

    search = StepSizeSearch((1.0, 0.6, 0.3, 0.1), points=4, max_extensions=0)
    _, _, sel = run_search(search, simulate)
    assert sel.lr == 0.6
    assert sel.ranking[-1] == (0.3, "diverged", None)


def test_ties_prefer_the_larger_step_size():
    values = {1.0: 0.80, 0.6: 0.905, 0.3: 0.91, 0.1: 0.7}
    search = StepSizeSearch((1.0, 0.6, 0.3, 0.1), points=4, tolerance=0.01, max_extensions=0)
    _, _, sel = run_search(search, lambda lr: Outcome("completed", values[lr]))
    assert sel.lr == 0.6 and sel.tie_with == [0.3]
    strict = StepSizeSearch((1.0, 0.6, 0.3, 0.1), points=4, tolerance=0.0, max_extensions=0)
    assert run_search(strict, lambda lr: Outcome("completed", values[lr]))[2].lr == 0.3


def test_minimising_a_loss():
    losses = {1.0: 0.5, 0.6: 0.2, 0.3: 0.3}
    search = StepSizeSearch((1.0, 0.6, 0.3), points=3, maximize=False, max_extensions=0)
    assert run_search(search, lambda lr: Outcome("completed", losses[lr]))[2].lr == 0.6


def test_every_grid_point_diverges():
    search = StepSizeSearch((1.0, 0.1), points=2)
    outcomes, order, sel = run_search(search, lambda lr: Outcome("diverged"))
    assert order == [1.0, 0.1] and sel is None


def test_restart_continues_from_stored_outcomes():
    """next_lr is a pure function of the outcomes: a restarted search repeats nothing."""
    simulate = accuracy_peaked_at(peak=0.1, diverge_above=1.0)
    search = StepSizeSearch(tuple(grid(1e-3, 10.0)), points=3)
    partial = {}
    for _ in range(4):
        lr = search.next_lr(partial)
        partial[lr] = simulate(lr)
    rest = []
    while (lr := search.next_lr(partial)) is not None:
        assert lr not in partial
        partial[lr] = simulate(lr)
        rest.append(lr)
    full = run_search(search, simulate)[1]
    assert list(partial) == full and rest == full[4:]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="sorted"):
        StepSizeSearch((0.1, 1.0))
    with pytest.raises(ValueError, match="points"):
        StepSizeSearch((1.0,), points=0)


# --- the probe: up while stable (to the cap), else down --------------------------------
def probe_run(probe, simulate, budget=50):
    outcomes, order = {}, []
    for _ in range(budget):
        lr = probe.next_lr(outcomes)
        if lr is None:
            return outcomes, order
        outcomes[lr] = simulate(lr)
        order.append(lr)
    raise AssertionError("probe did not terminate")


def stable_below(limit):
    return lambda lr: Outcome("diverged") if lr > limit else Outcome("completed", 0.5, True)


def test_probe_goes_up_while_stable_and_stops_at_the_first_unstable_step_size():
    lrs = tuple(grid(1e-4, 100.0))  # 100, 60, 30, 10, 6, 3, 1, ...
    probe = Probe(lrs, start=lrs.index(1.0))
    outcomes, order = probe_run(probe, stable_below(6.0))
    assert order == [1.0, 3.0, 6.0, 10.0]
    assert lrs[probe.top(outcomes)] == 6.0 and not probe.cap_reached(outcomes)


def test_probe_reports_a_stable_cap():
    lrs = tuple(grid(1e-4, 10.0))
    probe = Probe(lrs, start=lrs.index(1.0))
    outcomes, order = probe_run(probe, stable_below(1e9))
    assert order == [1.0, 3.0, 6.0, 10.0] and probe.top(outcomes) == 0
    assert probe.cap_reached(outcomes)


def test_probe_goes_down_when_the_start_is_unstable_and_says_when_nothing_is():
    lrs = tuple(grid(1e-3, 10.0, mantissas=(1,)))
    probe = Probe(lrs, start=lrs.index(1.0))
    outcomes, order = probe_run(probe, stable_below(0.05))
    assert order == [1.0, 0.1, 0.01] and lrs[probe.top(outcomes)] == 0.01
    outcomes, order = probe_run(probe, stable_below(0.0))
    assert order == [1.0, 0.1, 0.01, 0.001] and probe.top(outcomes) == len(lrs)


def test_a_run_whose_loss_does_not_fall_is_not_stable():
    """A saturated network (no divergence, no progress) does not count as stable."""
    lrs = tuple(grid(1e-3, 10.0, mantissas=(1,)))

    def saturates_above(lr):
        return Outcome("completed", 0.1, progressed=lr <= 0.1)

    probe = Probe(lrs, start=lrs.index(1.0))
    outcomes, order = probe_run(probe, saturates_above)
    assert order == [1.0, 0.1] and lrs[probe.top(outcomes)] == 0.1
    assert not Outcome("completed", 0.1, progressed=False).stable
    assert Outcome("completed", 0.1, progressed=None).stable  # unknown: not held against it
    assert not Outcome("diverged", None, progressed=True).stable
    # The search of full runs applies the same rule.
    search = StepSizeSearch(lrs, points=2)
    _, order, sel = run_search(search, saturates_above)
    assert order[:2] == [10.0, 1.0] and sel.lr in (0.1, 0.01)


def test_settings_build_the_grid_with_its_cap_and_a_probe_that_is_a_prefix():
    from dissecting_adam import methods

    s = SearchSettings("paper", up_points=6)
    msgd, adam = methods.get("msgd"), methods.get("adam")
    assert s.lrs(msgd)[:8] == (1000.0, 600.0, 300.0, 100.0, 60.0, 30.0, 10.0, 6.0)
    assert s.probe(msgd).lrs[s.probe(msgd).start] == 10.0  # the registry's start
    assert s.lrs(adam)[0] == 100.0 and s.lrs(adam)[-1] == 1e-5
    assert SearchSettings("paper", up_points=0).lrs(adam)[0] == 1.0
    # Probes stop at the stated fraction (the whole run resumes from them only where that
    # is one of its evaluation steps: tests/test_search_reading.py).
    assert s.probe_steps(6000) == 600
    assert SearchSettings("preview", probe_fraction=0.25).probe_steps(1500) == 375
    assert SearchSettings("smoke", probe_fraction=1.0).probe_steps(10) is None
    with pytest.raises(ValueError, match="progress_ratio"):
        SearchSettings("x", progress_ratio=0.0)
    assert SearchSettings("x").search_seed not in SearchSettings("x").replicate_seeds
