"""The errors a user's input raises (importable without torch: the CLI's light paths use them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake in a config: which file, which key, which value, what is allowed."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        where = ": ".join(p for p in (source, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class KeyedError(ValueError):
    """Raised inside cross-field validators so the message can name the offending dotted key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)
