"""The integration settings of an MD run, in one place for :func:`~md_protocols.run_md` and
:func:`~md_protocols.run_batched_md`: both take an :class:`MDProtocol` or its fields as keywords.

Units: K, fs, ps; ``friction_per_fs`` is the Langevin friction in fs⁻¹ (see
:mod:`md_protocols.simulate` for how it maps onto ASE's time unit).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from md_protocols.choices import check_literal_fields

__all__ = ["MDProtocol", "resolve_protocol"]


@dataclass(frozen=True)
class MDProtocol:
    """How a run integrates: ensemble, temperature, time step, length, friction and logging."""

    ensemble: Literal["nvt", "nve"] = "nvt"
    """``"nvt"`` (Langevin) or ``"nve"`` (velocity Verlet)."""
    temperature_K: float = 500.0
    """Thermostat target (NVT) and the default initial temperature."""
    timestep_fs: float = 0.5
    time_ps: float = 100.0
    """Length of the run; ``time_ps * 1000 / timestep_fs`` steps, rounded."""
    friction_per_fs: float = 0.01
    """Langevin friction γ in fs⁻¹ (NVT only)."""
    log_interval: int = 10
    """A frame is logged every this many steps, from step 0."""
    check_interval: int | None = None
    """Early-stop checks run every this many steps; None: every ``log_interval``."""
    initial_temperature_K: float | None = None
    """Maxwell–Boltzmann temperature of the starting velocities; None: ``temperature_K``."""

    def __post_init__(self):
        check_literal_fields(self)
        if not self.timestep_fs > 0 or not self.time_ps >= 0:
            raise ValueError(f"need timestep_fs > 0 and time_ps >= 0, got {self.timestep_fs}, {self.time_ps}")
        if self.log_interval < 1 or (self.check_interval is not None and self.check_interval < 1):
            raise ValueError("log_interval and check_interval must be >= 1")
        if self.ensemble == "nvt" and not self.friction_per_fs > 0:
            raise ValueError(f"NVT needs friction_per_fs > 0, got {self.friction_per_fs}")

    @property
    def n_steps(self) -> int:
        return int(round(self.time_ps * 1000.0 / self.timestep_fs))

    @property
    def every_check(self) -> int:
        return self.log_interval if self.check_interval is None else self.check_interval

    @property
    def initial_K(self) -> float:
        return self.temperature_K if self.initial_temperature_K is None else self.initial_temperature_K


def resolve_protocol(caller: str, protocol: MDProtocol | None, overrides: dict) -> MDProtocol:
    """``protocol`` (default :class:`MDProtocol()`) with ``overrides`` applied; errors name ``caller``."""
    valid = {f.name for f in fields(MDProtocol)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"{caller}: unexpected keyword(s) {unknown}; protocol settings are {sorted(valid)}")
    if protocol is not None and not isinstance(protocol, MDProtocol):
        raise TypeError(f"{caller}: protocol must be an MDProtocol, not {type(protocol).__name__}")
    try:
        return replace(protocol or MDProtocol(), **overrides)
    except ValueError as err:
        raise ValueError(f"{caller}: {err}") from None
