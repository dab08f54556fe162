"""``Registry[T]``: a name -> entry table, one per kind of plug-in (data sets, losses, models,
heads, pruners, samplers). Entries keep their registration order, which is the order every
listing and every "allowed: ..." message shows.

    MODELS = Registry[ModelSpec]("model")
    MODELS.add("resnet32", spec)             # or @MODELS.register("resnet32") on the entry
    MODELS.get("resnet32"); MODELS.names(); "resnet32" in MODELS; list(MODELS)  # names
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name no entry is registered under; the message lists the known names."""

    def __init__(self, kind: str, name: object, known: tuple[str, ...]):
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # "data set", "loss", ...: used in messages
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; returns the entry unchanged."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise UnknownName(self.kind, name, self.names()) from None

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> tuple[T, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
