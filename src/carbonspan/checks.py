"""What happens when settings are wrong beyond one value: a bad environment
variable (logged, the default used), an unknown `CARBONSPAN_*` name (warned
about once, with the closest known name), and the checks that involve two
settings or more (`cloud_region` with `cloud_provider`, `region` with
`country_iso_code`, the grid-intensity and embodied-emissions settings).

A check that involves a keyword argument raises `ValueError`: the mistake
is in the code. One that involves environment variables only is logged, and
the setting that needs the others is dropped.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from carbonspan import parsers
from carbonspan.carbon.grid import TOKEN_ENV

_log = logging.getLogger(__name__)

ENV_PREFIX = "CARBONSPAN_"


def check_all(values: dict[str, Any], from_env: Mapping[str, str]) -> None:
    """Every check that involves two settings or more, on `values` (edited:
    what the environment got wrong is dropped). `from_env` maps the settings
    that came from the environment to their raw text."""
    _check_pair(
        values, from_env, ("cloud_provider", "cloud_region"), parsers.check_cloud
    )
    _check_pair(
        values,
        from_env,
        ("country_iso_code", "region"),
        parsers.check_region,
        keep_first=True,
    )
    _check_sci(values, from_env)


def env_error(name: str, raw: Any, exc: ValueError) -> None:
    """A bad environment value: logged, and the default is used."""
    _log.error(
        "carbonspan: ignoring %s%s=%r: %s; using the default",
        ENV_PREFIX,
        name.upper(),
        raw,
        exc,
    )


_warned_env: set[str] = set()


def warn_unknown_env(
    environ: Mapping[str, str], names: Collection[str], objects: Iterable[str]
) -> None:
    """Warn, once per process and name, about `CARBONSPAN_*` names that are
    not among the settings `names` read from the environment (`objects`
    are keyword-only)."""
    known = {ENV_PREFIX + name.upper() for name in names}
    objects = set(objects)
    for var in environ:
        if not var.startswith(ENV_PREFIX) or var in known or var in _warned_env:
            continue
        _warned_env.add(var)
        setting = var[len(ENV_PREFIX) :].lower()
        if setting in objects:
            hint = f"{setting} is a Python object, given as a keyword argument only"
        else:
            close = difflib.get_close_matches(setting, names, n=1, cutoff=0.6)
            hint = (
                f"did you mean {ENV_PREFIX}{close[0].upper()}?"
                if close
                else "no setting has that name"
            )
        _log.warning(
            "carbonspan: %s is not a carbonspan setting and is ignored; %s",
            var,
            hint,
        )


def _check_pair(
    values: dict[str, Any],
    from_env: Mapping[str, str],
    names: tuple[str, str],
    check: Callable[[Any, Any], None],
    keep_first: bool = False,
) -> None:
    """A check on two settings (the second refines the first).

    If either value is a keyword argument, a failure raises `ValueError`: the
    mistake is in the code. If both come from the environment, it is logged,
    naming the variables actually set, and the settings are dropped: both, or
    with `keep_first` only the refinement (a country stands without a region).
    """
    first, second = names
    try:
        check(values.get(first), values.get(second))
    except ValueError as exc:
        given = [n for n in names if values.get(n) is not None]
        env = [n for n in given if n in from_env]
        if len(env) < len(given):
            if env:  # say which half came from the environment
                origin = ", ".join(f"{n} came from {_var(n, from_env[n])}" for n in env)
                raise ValueError(f"{exc}; {origin}") from None
            raise
        dropped = [second] if keep_first else given
        context = "".join(
            f" (with {ENV_PREFIX}{n.upper()} set to {from_env[n]!r})"
            for n in given
            if n not in dropped
        )
        _log.error(
            "carbonspan: ignoring %s%s: %s; using the default",
            " and ".join(_var(n, from_env[n]) for n in dropped),
            context,
            exc,
        )
        for name in dropped:
            values.pop(name, None)


def _var(name: str, raw: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}={raw!r}"


def _check_sci(values: dict[str, Any], from_env: Collection[str]) -> None:
    """Checks between the grid-intensity and embodied-emissions settings.

    As for `cloud_region`: a mistake raises when a setting involved was a
    keyword argument; from the environment only it is logged, and the
    setting that needs the others is dropped (its default applies).
    """
    checks: list[tuple[str, tuple[str, ...], str | None]] = []
    if values.get("intensity_provider") == "electricitymaps" and not (
        values.get("electricitymaps_zone") and values.get("electricitymaps_token")
    ):
        checks.append(
            (
                "intensity_provider",
                ("intensity_provider", "electricitymaps_zone", "electricitymaps_token"),
                "'electricitymaps' needs electricitymaps_zone (such as FR or "
                f"US-CAL-CISO) and a token in {TOKEN_ENV}",
            )
        )
    if values.get("boavizta_url"):
        if values.get("embodied_emissions") is not None:
            checks.append(
                (
                    "boavizta_url",
                    ("boavizta_url", "embodied_emissions"),
                    "give embodied_emissions or boavizta_url, not both",
                )
            )
        elif not (
            (values.get("cloud_provider") and values.get("cloud_instance"))
            or values.get("boavizta_archetype")
        ):
            checks.append(
                (
                    "boavizta_url",
                    (
                        "boavizta_url",
                        "cloud_provider",
                        "cloud_instance",
                        "boavizta_archetype",
                    ),
                    "needs cloud_provider and cloud_instance (such as aws and "
                    "m5.large), or boavizta_archetype (such as "
                    "platform_compute_medium)",
                )
            )
    for setting, involved, problem in checks:
        message = f"{setting}: {problem}"
        given = [n for n in involved if n in values]
        if any(n not in from_env for n in given):
            raise ValueError(message)
        env_error(setting, values.get(setting), ValueError(message))
        values.pop(setting, None)
