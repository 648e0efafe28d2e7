"""Per-function environment variables in one process.

On AWS every Lambda function has its own environment: the stage's
``environment_variables`` merged with ``lambda_functions.NAME.environment_variables``
of ``.chalice/config.json``. The local cloud runs every function in one
process, so :func:`install` replaces ``os.environ`` by a mapping that shows,
on the thread running an invocation, that function's own variables over the
process environment; :func:`function_scope` sets them for the duration of
one invocation.

``os.environ.get``, ``os.getenv``, ``os.environ[...]``, ``in`` and iteration
all see the function's variables. Writes go to the process environment, as
before. Code that reads the C environment directly (``getenv(3)`` in an
extension) sees only the process environment.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

_local = threading.local()


def _overlay() -> Mapping[str, str] | None:
    return getattr(_local, "overlay", None)


# os._Environ is generic only in typeshed: subscripting it would fail at run time.
class ScopedEnviron(os._Environ):  # type: ignore[type-arg]
    """``os.environ`` with a per-thread overlay of one function's variables."""

    def __getitem__(self, key: str) -> str:
        overlay = _overlay()
        if overlay is not None and key in overlay:
            return overlay[key]
        return str(super().__getitem__(key))

    def __contains__(self, key: object) -> bool:
        overlay = _overlay()
        if overlay is not None and key in overlay:
            return True
        return bool(super().__contains__(key))

    def __iter__(self) -> Iterator[str]:
        overlay = _overlay()
        seen: set[str] = set()
        for key in super().__iter__():
            seen.add(key)
            yield key
        if overlay is not None:
            yield from (key for key in overlay if key not in seen)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def copy(self) -> dict[str, str]:
        return dict(self)


def install() -> None:
    """Replace ``os.environ`` by a :class:`ScopedEnviron` sharing its data (idempotent)."""
    current: Any = os.environ
    if isinstance(current, ScopedEnviron):
        return
    os.environ = ScopedEnviron(  # noqa: B003 (same data, not a new environment; os.getenv reads it too)
        current._data, current.encodekey, current.decodekey, current.encodevalue, current.decodevalue
    )


@contextlib.contextmanager
def function_scope(variables: Mapping[str, str] | None) -> Iterator[None]:
    """Show ``variables`` over the process environment on this thread, for one invocation."""
    if not variables:
        yield
        return
    previous = _overlay()
    _local.overlay = dict(variables)
    try:
        yield
    finally:
        _local.overlay = previous


def function_variables(config: Any, stage: str, function_name: str, reserved: Mapping[str, str]) -> dict[str, str]:
    """The variables ``lambda_functions.NAME`` adds to (or changes in) the stage's, minus ``reserved`` names.

    :param config: Chalice's config object of the project.
    :param reserved: variables the runtime sets (AWS endpoint, region,
        credentials), which, like Lambda's reserved variables, a function's
        configuration cannot override.
    """
    stage_wide = stage_variables(config, stage)
    scoped = {k: str(v) for k, v in config.scope(stage, function_name).environment_variables.items()}
    return {k: v for k, v in scoped.items() if k not in reserved and stage_wide.get(k) != v}


# No Chalice function can have this name, so scoping to it merges no lambda_functions entry.
_NO_FUNCTION = "\x00no function"


def stage_variables(config: Any, stage: str) -> dict[str, str]:
    """The stage's variables without any ``lambda_functions`` entry (the process environment)."""
    return {k: str(v) for k, v in config.scope(stage, _NO_FUNCTION).environment_variables.items()}
