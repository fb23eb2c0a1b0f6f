"""The ledger's running books: joules per component (`Totals`), seconds
(`Times`), and the public view of both (`EnergyTotals`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Totals:
    known: tuple[bool, ...]
    attributed: tuple[float, ...]
    unattributed: tuple[float, ...]
    measured: tuple[float, ...]
    power: tuple[float, ...]
    #: J held by the requests still open at the last tick: measured -
    #: attributed - unattributed then (the ledger's invariant).
    open: tuple[float, ...] = (0.0, 0.0, 0.0)
    #: The part of `attributed` drawn by requests after their responses had
    #: gone (and their spans ended): `attributed` = their spans' J + this.
    after_response: tuple[float, ...] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Times:
    """Seconds integrated by the ledger: with no request in flight (`idle`),
    with some (`busy`), and the shared time of the windows closed so far,
    charged to requests (`attributed`) or not (`unattributed`: excluded, or
    opened before the first reading). Under time share, the shared time of
    every window, closed or open, adds up to `busy`."""

    idle: float
    busy: float
    attributed: float
    unattributed: float
    in_flight: int


@dataclass(frozen=True)
class EnergyTotals:
    """What one sampler has measured since it started, and how it was shared
    out: joules per measured component ("cpu", "gpu", "ram"; a component that
    is not measured has no key). Under `scope="process"` the source reports
    this process's share of the machine, under `scope="machine"` all of it.

    - `measured` (J): what the power source reported, up to its last reading.
    - `attributed` (J): charged to requests that have closed, up to now.
    - `unattributed` (J): drawn with no request in flight, by excluded
      requests, and the corrections of requests' tails, up to the last
      reading. It can dip below 0 where tails were guessed too high.
    - `open` (J): held at the last reading by the requests open then.
    - `power` (W): the source's mean power over the last interval.
    - `in_flight`: the requests open now.

    At a reading, measured == attributed + unattributed + open. Between two
    readings, the requests that closed since are in `attributed` already,
    and still in `open` as of the last reading.
    """

    measured: dict[str, float]
    attributed: dict[str, float]
    unattributed: dict[str, float]
    open: dict[str, float]
    power: dict[str, float]
    in_flight: int
