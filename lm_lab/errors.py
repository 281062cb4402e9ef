"""The one error type for a bad configuration or bad input, raised before any work is done."""

from dataclasses import fields


class ConfigError(ValueError):
    """A config or input problem a person can fix; its message names the field, the value and the fix.

    Several problems found at once are joined one per line, so a user sees all of them in one run.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def raise_if(problems: list[str]) -> None:
    """Raise one ConfigError listing every problem, or do nothing when the list is empty."""
    if problems:
        raise ConfigError(problems)


class CheckedSettings:
    """A settings dataclass whose `_problems(where)` lists what is wrong, each naming the field at `where`: its
    `problems(where, values)` checks a plain dict (a callback's YAML node) the same way, before anything is built."""

    def _problems(self, where: str) -> list[str]:
        raise NotImplementedError

    @classmethod
    def problems(cls, where: str, values: dict) -> list[str]:
        """What is wrong with these settings, each naming the field at `where` (e.g. `callbacks.ema`)."""
        known = [f.name for f in fields(cls)]
        unknown = [f"{where}.{k} is not a setting; use {', '.join(known)}" for k in values if k not in known]
        if unknown:
            return unknown
        config = cls.__new__(cls)  # the fields without __post_init__: report with this `where`
        for f in fields(cls):
            setattr(config, f.name, values.get(f.name, f.default))
        return config._problems(where)
