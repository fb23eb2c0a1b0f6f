"""`CodeCarbonInstrumentor`: wires the middleware into FastAPI apps.

It only wires things together. `instrument_app(app)` patches one app's
`build_middleware_stack`; `instrument()` patches
`fastapi.applications.FastAPI.build_middleware_stack`, so every app built
afterwards is covered whether this loads before or after the FastAPI
instrumentor. In both cases the built stack is returned with
`CodeCarbonMiddleware` placed just inside the span-creating middleware:

- below contrib's `OpenTelemetryMiddleware` (or Starlette's experimental
  one, added as a user middleware) when one is in the stack;
- otherwise just inside the outermost `ServerErrorMiddleware`, whose object is
  returned unchanged (contrib checks for it, and FastAPI's native telemetry
  opens its span outside the stack).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from carbonspan.attribution.totals import EnergyTotals
from carbonspan.config import Settings
from carbonspan.otel.instrumentation import Instrumentation
from carbonspan.otel.middleware import CodeCarbonMiddleware
from carbonspan.types import (
    ASGIApp,
    InstrumentorSettings,
    InstrumentSettings,
    Unpack,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

#: What `opentelemetry-instrument` checks before it loads the instrumentor.
_instruments = ("fastapi >= 0.100",)
_APP_ATTR = "_carbonspan_instrumentation"
_PATCH_ATTR = "_carbonspan_patch"


_SPAN_CREATORS = frozenset(
    (
        "opentelemetry.instrumentation.asgi",  # contrib's, also FastAPIInstrumentor's
        "starlette.middleware.opentelemetry",  # Starlette's experimental one
    )
)


def _creates_server_span(node: object) -> bool:
    cls = type(node)
    return (
        cls.__name__ == "OpenTelemetryMiddleware" and cls.__module__ in _SPAN_CREATORS
    )


def _layers(stack: object) -> Iterator[Any]:
    """A built stack's middlewares, outermost first (each holds the next in
    `.app`)."""
    node = stack
    while node is not None:
        yield node
        node = getattr(node, "app", None)


def _measuring(stack: object) -> CodeCarbonMiddleware | None:
    return next(
        (n for n in _layers(stack) if isinstance(n, CodeCarbonMiddleware)), None
    )


def insert_middleware(stack: ASGIApp, instrumentation: Instrumentation) -> ASGIApp:
    """Put `CodeCarbonMiddleware` into a built stack, just inside the span creator."""
    if _measuring(stack) is not None:
        return stack  # already measured (both instrument() and instrument_app)
    for node in _layers(stack):
        if _creates_server_span(node):
            node.app = CodeCarbonMiddleware(node.app, instrumentation=instrumentation)
            return stack
    outer: Any = stack
    if type(outer).__name__ == "ServerErrorMiddleware" and hasattr(outer, "app"):
        outer.app = CodeCarbonMiddleware(outer.app, instrumentation=instrumentation)
        return stack
    return CodeCarbonMiddleware(stack, instrumentation=instrumentation)


def instrumentation_of(app: object) -> Instrumentation | None:
    """The instrumentation measuring `app`, for tests and tools that look
    inside (users read `CodeCarbonInstrumentor.energy_totals`): its own
    (`instrument_app`), else the one whose middleware its built stack holds
    (`instrument()`, from the app's first request on). None where none is,
    or once it is uninstrumented."""
    own: Instrumentation | None = getattr(app, _APP_ATTR, None)
    if own is not None:
        return own if own.active else None
    found = _measuring(getattr(app, "middleware_stack", None))
    return (
        found.instrumentation
        if found is not None and found.instrumentation.active
        else None
    )


class _Patch:
    """The global `FastAPI.build_middleware_stack` patch and its instrumentation."""

    original: Callable[[Any], Any] | None = None
    instrumentation: Instrumentation | None = None


class CodeCarbonInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Energy and CO2eq of every HTTP request on its server span and in metrics.

    Settings are keyword arguments, or `CARBONSPAN_<NAME>` in the
    environment; `carbonspan.types.InstrumentSettings` lists them with their
    units, and docs/configuration.md with their defaults and checks (both
    come from the one table, `carbonspan.config.Settings`).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def instrument(self, **kwargs: Unpack[InstrumentorSettings]) -> None:
        """Measure every FastAPI app built from now on (see the class doc)."""
        super().instrument(**kwargs)

    def uninstrument(self, **kwargs: object) -> None:
        """Stop measuring the apps `instrument()` covered."""
        super().uninstrument(**kwargs)

    def _instrument(self, **kwargs: Any) -> None:
        import fastapi.applications

        if _Patch.original is not None:
            return
        instrumentation = Instrumentation(Settings.load(kwargs))
        cls = fastapi.applications.FastAPI
        original = cls.build_middleware_stack

        def build_middleware_stack(app: Any) -> Any:
            stack = original(app)
            own = getattr(app, _APP_ATTR, None)
            active = _Patch.instrumentation
            if (own is not None and own.active) or active is None or not active.active:
                return stack
            return insert_middleware(stack, active)

        _Patch.original = original
        _Patch.instrumentation = instrumentation
        setattr(cls, "build_middleware_stack", build_middleware_stack)  # noqa: B010

    def _uninstrument(self, **kwargs: Any) -> None:
        import fastapi.applications

        if _Patch.original is not None:
            cls = fastapi.applications.FastAPI
            setattr(cls, "build_middleware_stack", _Patch.original)  # noqa: B010
        if _Patch.instrumentation is not None:
            _Patch.instrumentation.close()
        _Patch.original = None
        _Patch.instrumentation = None

    @staticmethod
    def instrument_app(app: Starlette, **settings: Unpack[InstrumentSettings]) -> None:
        """Measure every request of one FastAPI (or Starlette) app."""
        existing: Instrumentation | None = getattr(app, _APP_ATTR, None)
        if existing is not None and existing.active:
            return
        instrumentation = Instrumentation(Settings.load(settings))
        original = app.build_middleware_stack

        def build_middleware_stack() -> Any:
            stack = original()
            if not instrumentation.active:
                return stack
            return insert_middleware(stack, instrumentation)

        setattr(app, _APP_ATTR, instrumentation)
        setattr(app, _PATCH_ATTR, (original, build_middleware_stack))
        setattr(app, "build_middleware_stack", build_middleware_stack)  # noqa: B010
        if getattr(app, "middleware_stack", None) is not None:
            app.middleware_stack = app.build_middleware_stack()

    @staticmethod
    def uninstrument_app(app: Starlette) -> None:
        """Stop measuring `app` and take the middleware out of its stack."""
        instrumentation: Instrumentation | None = getattr(app, _APP_ATTR, None)
        if instrumentation is None:
            return
        instrumentation.close()
        original, wrapper = app.__dict__.pop(_PATCH_ATTR)
        if app.__dict__.get("build_middleware_stack") is wrapper:
            # Nobody patched over us; otherwise our wrapper stays in their
            # chain and passes the stack through, as the instrumentation is closed.
            setattr(app, "build_middleware_stack", original)  # noqa: B010
        delattr(app, _APP_ATTR)
        if getattr(app, "middleware_stack", None) is not None:
            app.middleware_stack = app.build_middleware_stack()

    @staticmethod
    def energy_totals(app: object = None) -> EnergyTotals | None:
        """What the sampler measuring `app` has measured so far, and how it
        was shared out (see `EnergyTotals`); with no `app`, that of
        `instrument()`. Apps instrumented with the same power source and
        settings share one sampler, and so these totals. None where nothing
        measures the app (under `instrument()`, until its first request), or
        before the first reading."""
        instrumentation = (
            _Patch.instrumentation if app is None else instrumentation_of(app)
        )
        if instrumentation is None or not instrumentation.active:
            return None
        return instrumentation.energy_totals()
