"""Count `Any` in the annotations of carbonspan's public API.

The public API is what `carbonspan.__all__` and `carbonspan.testing` export:
their public methods (inherited ones included), properties and annotated
attributes, and the hook type users annotate with. Run it with the project's
interpreter: `.venv/bin/python scripts/public_any.py`; with an older checkout's
src on PYTHONPATH it counts that one.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import carbonspan
import carbonspan.testing

ANY = re.compile(r"\bAny\b")


def text(annotation: object) -> str:
    return annotation if isinstance(annotation, str) else repr(annotation)


def in_signature(name: str, fn: Callable[..., Any]) -> Iterator[tuple[str, str]]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    for p in signature.parameters.values():
        if p.annotation is not inspect.Parameter.empty:
            yield f"{name}({p.name})", text(p.annotation)
    if signature.return_annotation is not inspect.Signature.empty:
        yield f"{name} ->", text(signature.return_annotation)


def annotations() -> Iterator[tuple[str, str]]:
    seen: set[int] = set()
    for module in (carbonspan, carbonspan.testing):
        names = getattr(module, "__all__", None) or [
            n for n in vars(module) if not n.startswith("_")
        ]
        for name in names:
            obj = getattr(module, name)
            home = inspect.getmodule(obj)
            if (
                id(obj) in seen
                or home is None
                or not home.__name__.startswith("carbonspan")
            ):
                continue
            seen.add(id(obj))
            if not inspect.isclass(obj):
                if callable(obj):
                    yield from in_signature(name, obj)
                continue
            for field, annotation in getattr(obj, "__annotations__", {}).items():
                if not field.startswith("_"):
                    yield f"{name}.{field}", text(annotation)
            for attr in dir(obj):
                if attr.startswith("_") and attr not in ("__init__", "__call__"):
                    continue
                value = inspect.getattr_static(obj, attr)
                if isinstance(value, property):
                    value = value.fget
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if callable(value):
                    yield from in_signature(f"{name}.{attr}", value)
    for module_name in ("carbonspan.types", "carbonspan.config"):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:  # an older checkout
            continue
        hook = getattr(module, "MeasurementHook", None)
        if hook is not None:
            yield f"{module_name}.MeasurementHook", text(hook)
            break


def main() -> None:
    total = 0
    for where, annotation in annotations():
        count = len(ANY.findall(annotation))
        if count:
            total += count
            print(f"{count}  {where}: {annotation}")
    print(f"{total} Any in the public API")


if __name__ == "__main__":
    main()
