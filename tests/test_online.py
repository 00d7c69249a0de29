"""Learning during MD (md_protocols.online): periodic updates of a potential along one trajectory,
the naive baseline, and ttcalc's MDLearner.

The generic tests use a Lennard-Jones argon cluster whose learner fits the well depth ε to reference
forces of a Lennard-Jones "truth" with another ε (forces are linear in ε, so one least-squares
update recovers it exactly): cheap, physical and exact to check.
"""
from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.lj import LennardJones
from ase.cluster import Icosahedron

from md_protocols import run_md
from md_protocols.online import OnlineSettings, PeriodicLearning, label_frames, naive_update

TRUE_EPS, START_EPS, SIGMA = 0.0120, 0.0100, 3.40


def _cluster():
    return Icosahedron("Ar", noshells=2, latticeconstant=5.26)  # 13 atoms, near the LJ minimum


def _lj(eps):
    return LennardJones(epsilon=eps, sigma=SIGMA, rc=10.0, smooth=True)


class EpsilonLearner:
    """Owns an LJ calculator; fits ε to labelled forces (F ∝ ε). ``fail_at`` makes chosen updates raise."""

    def __init__(self, fail_at=()):
        self.calc = _lj(START_EPS)
        self.fail_at, self.calls = set(fail_at), 0
        self.uncertainty_value = 0.0

    def update(self, frames):
        self.calls += 1
        unit = label_frames(frames, _lj(1.0))
        f_ref = np.concatenate([a.get_forces() for a in frames]).ravel()
        f_unit = np.concatenate([a.get_forces() for a in unit]).ravel()
        self.calc.parameters.epsilon = float(f_unit @ f_ref / (f_unit @ f_unit))
        self.calc.reset()
        if self.calls in self.fail_at:  # fails after changing the weights: the caller must restore
            raise FloatingPointError("diverged")
        return {"epsilon": self.calc.parameters.epsilon}

    def get_state(self):
        return float(self.calc.parameters.epsilon)

    def set_state(self, eps):
        self.calc.parameters.epsilon = float(eps)
        self.calc.reset()

    def uncertainty(self, atoms):
        return self.uncertainty_value, 0.5


class EpsilonSpy:
    """An observer that records ε at every logged frame (after the learner's observer ran)."""

    def __init__(self, learner):
        self.learner, self.seen = learner, []

    def bind(self, path):
        pass

    def __call__(self, step, atoms):
        self.seen.append((step, self.learner.get_state()))
        return False

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _run(learner, settings, time_ps=0.2, **kw):
    online = PeriodicLearning(learner, _lj(TRUE_EPS), settings)
    spy = EpsilonSpy(learner)
    res = run_md(_cluster(), learner.calc, ensemble="nvt", temperature_K=60, timestep_fs=2.0, time_ps=time_ps,
                 log_interval=5, progress=False, seed=1, observers=[online, spy], **kw)
    return res, online, spy


def test_weights_change_only_at_the_update_points_and_reach_the_reference():
    learner = EpsilonLearner()
    res, online, spy = _run(learner, OnlineSettings(interval=40, n_label=3, window=40, label_budget=6))
    assert res.status == "finished"
    assert [e["step"] for e in online.events] == [40, 80]  # then the budget of 6 labels is spent
    assert online.labels_used == 6 and all(e["ok"] for e in online.events)
    for step, eps in spy.seen:
        assert eps == pytest.approx(START_EPS if step < 40 else TRUE_EPS, rel=1e-9)
    assert res.extra["observers"][0] == online.events


def test_the_label_budget_caps_the_reference_calls():
    calls = []

    class Counting(LennardJones):
        def calculate(self, *args, **kwargs):
            calls.append(1)
            super().calculate(*args, **kwargs)

    learner = EpsilonLearner()
    online = PeriodicLearning(learner, Counting(epsilon=TRUE_EPS, sigma=SIGMA, rc=10.0, smooth=True),
                              OnlineSettings(interval=10, n_label=4, window=50, label_budget=10))
    run_md(_cluster(), learner.calc, time_ps=0.2, timestep_fs=2.0, log_interval=5, progress=False, observers=[online])
    assert online.labels_used == 10 and len(calls) == 10
    assert [len(e["frames"]) for e in online.events] == [3, 4, 3]  # 3 candidates at step 10; then the rest


def test_a_failed_update_is_rolled_back_and_md_goes_on():
    learner = EpsilonLearner(fail_at={1})
    res, online, spy = _run(learner, OnlineSettings(interval=40, n_label=3, window=40, label_budget=6))
    assert res.status == "finished"
    assert [e["ok"] for e in online.events] == [False, True]
    assert "FloatingPointError: diverged" in online.events[0]["error"]
    for step, eps in spy.seen:
        assert eps == pytest.approx(START_EPS if step < 80 else TRUE_EPS, rel=1e-9)


def test_the_q_trigger_updates_on_the_most_uncertain_frames_only_above_the_limit():
    learner = EpsilonLearner()

    class Above(EpsilonSpy):
        def __call__(self, step, atoms):  # runs before the learner's observer: sets this frame's value
            learner.uncertainty_value = 1.0 if step in (30, 35) else 0.1 * (step % 7) / 7
            return False

    online = PeriodicLearning(learner, _lj(TRUE_EPS), OnlineSettings(trigger="q_residual", interval=20, n_label=2,
                                                                     window=40, label_budget=4))
    run_md(_cluster(), learner.calc, time_ps=0.1, timestep_fs=2.0, log_interval=5, progress=False,
           observers=[Above(learner), online])
    assert [e["step"] for e in online.events] == [30]  # 35 is above too, but within `interval` of 30
    assert online.events[0]["frames"] == [20, 30]  # the two most uncertain candidates up to step 30


def test_an_interrupted_periodic_run_resumes_to_the_same_trajectory(tmp_path):
    settings = OnlineSettings(interval=40, n_label=3, window=40, label_budget=9)
    whole, online_whole, _ = _run(EpsilonLearner(), settings, time_ps=0.3, trajectory=tmp_path / "a.traj")
    first, _, _ = _run(EpsilonLearner(), settings, time_ps=0.19, trajectory=tmp_path / "b.traj")
    assert first.steps < 100  # stopped after the first update and before the second
    rest, online_rest, spy = _run(EpsilonLearner(), settings, time_ps=0.3, trajectory=tmp_path / "b.traj",
                                  resume=True)
    assert spy.seen[0][1] == pytest.approx(TRUE_EPS, rel=1e-12)  # the weights after update 1 came back
    assert online_rest.events == online_whole.events
    assert np.array_equal(rest.frames[-1], whole.frames[-1])
    assert np.array_equal(rest.energies["total"], whole.energies["total"])


def test_naive_update_labels_frames_drawn_from_the_pooled_trajectories():
    learner = EpsilonLearner()
    trajectories = []
    for seed in range(3):
        res = run_md(_cluster(), _lj(START_EPS), time_ps=0.05, timestep_fs=2.0, log_interval=5, progress=False,
                     seed=seed)
        trajectories.append([_cluster().__class__(numbers=_cluster().numbers, positions=p) for p in res.frames])
    out = naive_update(learner, trajectories, _lj(TRUE_EPS), n_label=5, seed=0)
    assert len(out["frames"]) == 5 and all(k >= 1 for _, k in out["frames"])
    assert learner.get_state() == pytest.approx(TRUE_EPS, rel=1e-9)
    with pytest.raises(ValueError, match="n_label"):
        naive_update(learner, trajectories, None, n_label=0)


def test_bad_settings_and_a_resume_with_other_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="trigger"):
        OnlineSettings(trigger="sometimes")
    with pytest.raises(ValueError, match="label_budget"):
        OnlineSettings(label_budget=-1)
    _run(EpsilonLearner(), OnlineSettings(interval=40), time_ps=0.1, trajectory=tmp_path / "c.traj")
    with pytest.raises(ValueError, match="online-learning settings differ"):
        _run(EpsilonLearner(), OnlineSettings(interval=20), time_ps=0.2, trajectory=tmp_path / "c.traj", resume=True)


def test_md_learner_fine_tunes_a_tttcalculator_during_md_on_xtb_labels(tiny_model_path, benzene, prior):
    """ttcalc's learner on a real model: updates at the set points only, and exact state restore."""
    import torch

    from ttcalc import TTTCalculator
    from ttcalc.calculator import MDLearner

    calc = TTTCalculator(model=str(tiny_model_path), compile=False, disagreement_every=0)
    learner = MDLearner(calc, "finetune", max_steps=5, eval_every=1)
    snapshots = []

    class Weights(EpsilonSpy):
        def __call__(self, step, atoms):
            snapshots.append((step, {n: p.clone() for n, p in calc.model.named_parameters()}))
            return False

    online = PeriodicLearning(learner, prior.as_calculator(),
                              OnlineSettings(interval=10, n_label=4, window=20, label_budget=3))
    start = benzene.copy()
    start.calc = None
    res = run_md(start, calc, time_ps=0.01, timestep_fs=0.5, log_interval=5, progress=False,
                 observers=[online, Weights(None)])
    assert res.status == "finished" and [e["step"] for e in online.events] == [10]
    assert online.events[0]["ok"] and online.events[0]["report"]["kind"] == "finetune"

    def same(a, b):
        return all(torch.equal(a[n], b[n]) for n in a)

    before = [w for s, w in snapshots if s < 10]
    after = [w for s, w in snapshots if s >= 10]
    assert all(same(before[0], w) for w in before) and all(same(after[0], w) for w in after)
    assert not same(before[0], after[0])
    state = learner.get_state()
    calc.reset_adaptation()
    learner.set_state(state)
    assert same(after[0], {n: p for n, p in calc.model.named_parameters()})
    with pytest.raises(ValueError, match="needs a calculator with a prior"):
        MDLearner(calc, "adapt")
    with pytest.raises(ValueError, match="mode must be one of 'finetune', 'adapt'; got 'relabel'"):
        MDLearner(calc, "relabel")
