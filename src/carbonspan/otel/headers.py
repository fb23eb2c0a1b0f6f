"""Response headers with a request's figures so far (`response_headers`)."""

from __future__ import annotations

from collections.abc import Callable

#: (duration s, J or None, g or None) -> header lines.
HeaderWriter = Callable[
    [float, "float | None", "float | None"], list[tuple[bytes, bytes]]
]


def header_writer(fields: tuple[str, ...], style: str) -> HeaderWriter | None:
    """Response headers with a request's figures so far, or None when they
    are off: `write(duration, joules, grams)` gives the header lines.

    `fields` are among energy, emissions and duration; `style` is
    x-codecarbon, server-timing or both.
    """
    if not fields:
        return None
    x_style = style in ("x-codecarbon", "both")
    timing = style in ("server-timing", "both")

    def write(
        duration: float, joules: float | None, grams: float | None
    ) -> list[tuple[bytes, bytes]]:
        # Whole milliseconds: finer would let any client time the server's own
        # work (see docs/hooks-and-headers.md).
        values: dict[str, float] = {"duration": float(round(duration * 1000.0))}
        if joules is not None and grams is not None:
            values["energy"] = joules
            values["emissions"] = grams
        out: list[tuple[bytes, bytes]] = []
        entries = []
        for name in fields:
            if name not in values:
                continue
            value = values[name]
            if x_style:
                out.append((_X_HEADERS[name], f"{value:.6g}".encode()))
            if timing:
                unit, scale = _TIMING[name]
                entries.append(
                    f'codecarbon-{name};dur={value * scale:.6g};desc="{unit}"'
                )
        if entries:
            out.append((b"server-timing", ", ".join(entries).encode()))
        return out

    return write


_X_HEADERS = {
    "energy": b"x-codecarbon-energy",
    "emissions": b"x-codecarbon-emissions",
    "duration": b"x-codecarbon-duration",
}
# Server-Timing has one number per entry, `dur`, shown by browsers as ms:
# energy goes as mJ and emissions as mg so that small values stay readable.
_TIMING = {
    "energy": ("mJ", 1000.0),
    "emissions": ("mg CO2eq", 1000.0),
    "duration": ("ms", 1.0),
}
