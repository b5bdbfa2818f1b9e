"""A tiny typed registry: plain dict, ``register``/``get``, errors that list valid names."""

from __future__ import annotations

from typing import Generic, TypeVar

from umedpt.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (task types, encoder presets, data formats, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.kind, name, list(self._entries)) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
