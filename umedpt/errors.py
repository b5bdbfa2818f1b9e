"""Typed errors whose messages say what was received and what to do instead."""

from __future__ import annotations

from pathlib import Path


class UmedptError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(UmedptError):
    """A site or run configuration is invalid; the message names the file and the field."""

    def __init__(self, file: Path | str, field: str, problem: str) -> None:
        self.file = Path(file)
        self.field = field
        self.problem = problem
        super().__init__(f"{file}: field '{field}': {problem}")


class DataError(UmedptError):
    """A sample cannot be used; the message names the file (and the task) at fault."""

    def __init__(self, source: str, problem: str, *, task: str | None = None) -> None:
        self.source = source
        self.problem = problem
        self.task = task
        where = f"task '{task}': " if task else ""
        super().__init__(f"{where}{source}: {problem}")


class RegistryError(UmedptError, KeyError):
    """An unknown name was asked of a registry; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} '{name}'; valid names: {', '.join(sorted(valid))}")

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])
