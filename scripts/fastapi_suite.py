"""FastAPI's own test suite as a judge: does carbonspan change what apps do?

Downloads the source distribution of the installed FastAPI from PyPI (it
ships its tests), runs its suite three times, without carbonspan and with
every FastAPI app instrumented under each attribution policy
(`CodeCarbonInstrumentor().instrument()`, as `opentelemetry-instrument`
would, with a constant test power source), and compares the outcome of
every test. Exits 1 if carbonspan changed any.

    python scripts/fastapi_suite.py [pytest options, e.g. -x -k routing]

The suite needs FastAPI's test dependencies (see its pyproject's `tests`
group); tests whose imports are missing fail alike in every run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

PLUGIN = """
import os

def pytest_configure(config):
    policy = os.environ.get("FASTAPI_SUITE_POLICY")
    if policy:
        from carbonspan import CodeCarbonInstrumentor
        from carbonspan.testing import ConstantPowerSource

        CodeCarbonInstrumentor().instrument(
            power_source=ConstantPowerSource(cpu=5.0, ram=2.0),
            attribution=policy,
            sample_interval=0.05,
        )

def pytest_unconfigure(config):
    if os.environ.get("FASTAPI_SUITE_POLICY"):
        from carbonspan import CodeCarbonInstrumentor

        CodeCarbonInstrumentor().uninstrument()

_outcomes = {}

def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        _outcomes[report.nodeid] = report.outcome

def pytest_sessionfinish(session):
    import json
    if os.environ.get("FASTAPI_SUITE_POLICY"):
        # What the instrumentation measured: proof that it ran.
        from carbonspan import CodeCarbonInstrumentor

        totals = CodeCarbonInstrumentor.energy_totals()
        attributed = sum(totals.attributed.values()) if totals else 0.0
        _outcomes["carbonspan: attributed J"] = f"{attributed:.3f}"
    with open(os.environ["FASTAPI_SUITE_OUT"], "w") as f:
        json.dump(_outcomes, f)
"""


def suite(workdir: Path) -> Path:
    """FastAPI's sdist for the installed version, unpacked in `workdir`."""
    release = version("fastapi")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--no-binary", ":all:", f"fastapi=={release}", "-d", str(workdir)],
        check=True,
    )  # fmt: skip
    with tarfile.open(workdir / f"fastapi-{release}.tar.gz") as sdist:
        sdist.extractall(workdir, filter="data")
    root = workdir / f"fastapi-{release}"
    (root / "carbonspan_suite.py").write_text(PLUGIN)
    return root


def run(root: Path, policy: str | None, args: list[str]) -> dict[str, str]:
    out = root / f"outcomes-{policy or 'plain'}.json"
    env = {**os.environ, "FASTAPI_SUITE_OUT": str(out), "PYTHONPATH": str(root)}
    env.pop("FASTAPI_SUITE_POLICY", None)
    if policy:
        env["FASTAPI_SUITE_POLICY"] = policy
    # The sdist's own copy of FastAPI may be the one imported: the same
    # release as the installed one.
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "carbonspan_suite",
         "-p", "no:cacheprovider", "tests", *args],
        cwd=root, env=env, check=False,
    )  # fmt: skip
    outcomes: dict[str, str] = json.loads(out.read_text())
    return outcomes


def main() -> int:
    args = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        root = suite(Path(tmp))
        plain = run(root, None, args)
        changed = 0
        for policy in ("time_share", "cpu_time"):
            got = run(root, policy, args)
            measured = got.pop("carbonspan: attributed J", "none")
            print(
                f"{policy}: carbonspan attributed {measured} J to the suite's requests"
            )
            diff = {
                t: (plain.get(t), got.get(t))
                for t in set(plain) | set(got)
                if plain.get(t) != got.get(t)
            }
            counts = {
                o: sum(1 for v in got.values() if v == o) for o in set(got.values())
            }
            print(f"{policy}: {len(got)} tests, {counts}; {len(diff)} changed")
            for test, (before, after) in sorted(diff.items()):
                print(f"  {test}: {before} without carbonspan, {after} with it")
            changed += len(diff)
        counts = {
            o: sum(1 for v in plain.values() if v == o) for o in set(plain.values())
        }
        print(f"without carbonspan: {len(plain)} tests, {counts}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
