"""The one error type for a bad configuration or bad input, raised before any work is done."""


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
