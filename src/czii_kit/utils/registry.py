"""One plug-in registry type: models, losses and the like are chosen by name from config."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from czii_kit.errors import ConfigError

T = TypeVar("T")


class Registry(dict):
    """name -> factory, with errors that list what is registered and what a factory accepts."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        """Class (or function) decorator that makes ``name`` buildable."""
        def add(factory: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} name {name!r} is already registered by {self[name].__qualname__}")
            self[name] = factory
            return factory
        return add

    def build(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as ``name``, after checking ``kwargs`` against its signature."""
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self))}")
        factory = self[name]
        check_args(factory, kwargs, f"{self.kind} {name!r}")
        return factory(*args, **kwargs)


def check_args(factory: Callable[..., Any], args: Mapping[str, Any], what: str) -> None:
    """Raise ConfigError naming any key of ``args`` that ``factory``'s signature does not accept."""
    accepted = [p.name for p in inspect.signature(factory).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [key for key in args if key not in accepted]
    if unknown:
        raise ConfigError(f"unknown argument(s) {', '.join(map(repr, unknown))} for {what}; "
                          f"accepted arguments: {', '.join(accepted)}")
