"""Learning during MD (Wong & Yang, "Bias in universal MLIPs and its effects on fine-tuning",
arXiv 2603.10159, 2026): one trajectory whose potential is updated at set points and then continued
with the new weights ("periodic fine-tuning"), and the baseline that labels frames of many
trajectories of the unadapted potential and updates once ("naive fine-tuning").

md_protocols knows nothing of the model. A :class:`Learner` owns the weights and updates them from
frames; a *label source* is any ASE calculator (DFT, GFN2-xTB, a stand-in) whose energy and forces
are attached to the chosen frames, or None, in which case the learner labels frames itself (e.g.
test-time training on its own prior).

:class:`PeriodicLearning` is a :func:`~md_protocols.run_md` observer. It sees every logged frame
and keeps the frames of the last ``window`` steps as candidates. It updates

* ``trigger="interval"``: every ``interval`` steps, on ``n_label`` candidates evenly spaced in time;
* ``trigger="q_residual"``: when the learner's uncertainty exceeds its limit (and at least
  ``interval`` steps after the last update), on the ``n_label`` most uncertain candidates.

Weights change only at those points. A failed update (an exception) restores the weights it
started from and MD goes on. After any update the calculator is reset, so the forces of the next
step are recomputed; positions, momenta and the thermostat's generator are untouched. The number of
frames sent for labelling never exceeds ``label_budget``. Its state (candidates, events, budget)
lives in ``run_md``'s resume sidecar and the learner's weights after each update in
``<trajectory>.learner-<k>.pkl``, so an interrupted run resumes to the same trajectory.
"""
from __future__ import annotations

import base64
import logging
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator

from md_protocols.choices import check_literal_fields
from md_protocols.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["Learner", "OnlineSettings", "PeriodicLearning", "label_frames", "naive_update"]


class Learner(Protocol):
    """What :class:`PeriodicLearning` and :func:`naive_update` need of a trainable potential."""

    def update(self, frames: list[Atoms]) -> dict:
        """Update the weights from ``frames`` (labelled by their calculators, or unlabelled when the
        learner labels them itself); a JSON-able summary. May raise: the caller restores."""

    def get_state(self) -> Any:
        """The weights (picklable)."""

    def set_state(self, state: Any) -> None:
        """Put weights from :meth:`get_state` back (the calculator must recompute afterwards)."""

    def uncertainty(self, atoms: Atoms) -> tuple[float, float]:
        """(value, limit) for the structure just calculated (e.g. Q-residual and its limit)."""


@dataclass(frozen=True)
class OnlineSettings:
    """When :class:`PeriodicLearning` updates and on which frames (steps are MD steps)."""

    trigger: Literal["interval", "q_residual"] = "interval"
    """``"interval"``: update every ``interval`` steps; ``"q_residual"``: when the uncertainty passes
    its limit."""
    interval: int = 2000
    """Steps between updates (for ``"q_residual"``, the fewest steps between two updates)."""
    n_label: int = 8
    """Frames labelled per update."""
    window: int = 2000
    """Candidates are the logged frames of the last ``window`` steps."""
    label_budget: int = 48
    """Frames sent for labelling over the whole run, at most."""

    def __post_init__(self):
        check_literal_fields(self)
        if min(self.interval, self.n_label, self.window) < 1 or self.label_budget < 0:
            raise ValueError("interval, n_label and window must be >= 1 and label_budget >= 0")


def label_frames(frames: Sequence[Atoms], source: Calculator) -> list[Atoms]:
    """Copies of ``frames`` carrying ``source``'s energy and forces (eV, eV/Å) in a
    :class:`SinglePointCalculator`, as fine-tuning on labels reads them."""
    out = []
    for atoms in frames:
        a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        a.calc = source
        energy, forces = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=float(energy), forces=np.array(forces))
        out.append(a)
    return out


def _pack(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype=np.float64).tobytes()).decode()


def _unpack(s: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=np.float64).reshape(shape).copy()


class PeriodicLearning:
    """A :func:`~md_protocols.run_md` observer that updates ``learner`` during the run (module
    docstring). ``label_source``: an ASE calculator for reference labels, or None (the learner
    labels). ``events`` lists every update: step, frames, ok, the learner's summary or the error."""

    def __init__(self, learner: Learner, label_source: Calculator | None, settings: OnlineSettings | None = None):
        self.learner, self.label_source = learner, label_source
        self.settings = settings or OnlineSettings()
        self.candidates: list[tuple[int, np.ndarray, float]] = []  # (step, positions, uncertainty)
        self.events: list[dict] = []
        self.labels_used = 0
        self.last_update = 0
        self.numbers: np.ndarray | None = None
        self.trajectory: Path | None = None

    # --- run_md's observer interface ----------------------------------------------------------------
    def __call__(self, step: int, atoms: Atoms) -> bool:
        """Called at each logged frame after its energy is known; True when the weights changed."""
        s = self.settings
        self.numbers = atoms.numbers.copy()
        value, limit = self.learner.uncertainty(atoms) if s.trigger == "q_residual" else (0.0, 0.0)
        self.candidates = [c for c in self.candidates if c[0] > step - s.window]
        self.candidates.append((step, atoms.positions.copy(), float(value)))
        left = s.label_budget - self.labels_used
        if step == 0 or left <= 0 or step - self.last_update < s.interval:
            return False
        if s.trigger == "q_residual" and not value > limit:
            return False
        self._update(step, atoms, min(s.n_label, left))
        return True

    def _chosen(self, n: int) -> list[tuple[int, np.ndarray, float]]:
        c = self.candidates
        if self.settings.trigger == "q_residual":
            order = np.argsort([-v for _, _, v in c], kind="stable")[:n]
        else:
            order = np.unique(np.round(np.linspace(len(c) - 1, 0, n)).astype(int))
        return [c[i] for i in sorted(order)]

    def _update(self, step: int, atoms: Atoms, n: int) -> None:
        chosen = self._chosen(n)
        frames = [Atoms(numbers=atoms.numbers, positions=p, cell=atoms.cell, pbc=atoms.pbc) for _, p, _ in chosen]
        if self.label_source is not None:
            frames = label_frames(frames, self.label_source)
        self.labels_used += len(frames)
        start = self.learner.get_state()
        event = {"step": step, "frames": [c[0] for c in chosen], "labels_used": self.labels_used}
        try:
            event.update(ok=True, report=self.learner.update(frames))
        except Exception as exc:  # a failed update must not end the run: restore and go on
            self.learner.set_state(start)
            event.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            logger.warning("update at step %d failed and was rolled back: %s", step, event["error"])
        self.last_update = step
        self.events.append(event)
        self._save_weights()
        logger.info("update %d at step %d on %d frames (%d labels used)", len(self.events), step, len(frames),
                    self.labels_used)

    # --- resume -------------------------------------------------------------------------------------
    def bind(self, trajectory: str | Path | None) -> None:
        """The run's trajectory: the learner's weights after each update are kept beside it."""
        self.trajectory = None if trajectory is None else Path(trajectory)

    def _weights_path(self, k: int) -> Path | None:
        return None if self.trajectory is None else self.trajectory.with_name(f"{self.trajectory.name}.learner-{k}.pkl")

    def _save_weights(self) -> None:
        path = self._weights_path(len(self.events))
        if path is not None:  # written before the sidecar that names it
            with atomic_write(path, "wb") as fh:
                pickle.dump(self.learner.get_state(), fh)

    def state_dict(self) -> dict:
        """JSON-able state for the resume sidecar (the weights are in their own files)."""
        shape = None if self.numbers is None else [len(self.numbers), 3]
        return {"settings": asdict(self.settings), "labels_used": self.labels_used, "last_update": self.last_update,
                "events": self.events, "shape": shape,
                "candidates": [[k, _pack(p), v] for k, p, v in self.candidates]}

    def load_state_dict(self, state: dict) -> None:
        if state["settings"] != asdict(self.settings):
            raise ValueError(f"resume: online-learning settings differ from the stored run "
                             f"(stored {state['settings']}, given {asdict(self.settings)})")
        self.labels_used, self.last_update = int(state["labels_used"]), int(state["last_update"])
        self.events = list(state["events"])
        self.candidates = [(int(k), _unpack(p, state["shape"]), float(v)) for k, p, v in state["candidates"]]
        if self.events:
            with open(self._weights_path(len(self.events)), "rb") as fh:  # our own file
                self.learner.set_state(pickle.load(fh))


def naive_update(learner: Learner, trajectories: Sequence[Sequence[Atoms]], label_source: Calculator | None,
                 n_label: int, seed: int = 0) -> dict:
    """The naive baseline: ``n_label`` frames drawn uniformly from the pooled frames of
    ``trajectories`` (MD of the unadapted potential), labelled by ``label_source`` (None: the
    learner labels), and one update. Returns the learner's summary with the frames used."""
    pool = [(i, k) for i, traj in enumerate(trajectories) for k in range(1, len(traj))]  # not the shared start
    if n_label < 1 or not pool:
        raise ValueError(f"need n_label >= 1 and frames beyond the starts (n_label={n_label}, pool={len(pool)})")
    pick = np.random.default_rng(seed).choice(len(pool), size=min(n_label, len(pool)), replace=False)
    frames = [trajectories[pool[j][0]][pool[j][1]] for j in sorted(pick)]
    if label_source is not None:
        frames = label_frames(frames, label_source)
    return {"frames": [list(pool[j]) for j in sorted(pick)], "report": learner.update(list(frames))}
