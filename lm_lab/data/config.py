"""`DataConfig`: which corpus a run reads, how it is split, where its token files are cached."""

from __future__ import annotations

from dataclasses import dataclass

from lm_lab.errors import raise_if

SOURCES = ("embedded",)


@dataclass
class DataConfig:
    """Where the text comes from and how it is split and cached."""

    name: str = "embedded"
    """Corpus: `embedded` (the Python standard library's sources and pydoc topics)."""
    cache_dir: str = "~/.cache/lm_lab"
    """Tokenizers and token files are cached here, keyed by the corpus content."""
    val_fraction: float = 0.1
    """Fraction of documents held out for validation, chosen by a hash of each document's id."""
    num_workers: int = 0
    """DataLoader worker processes; reading windows from a memory map is cheap, so 0 is usually right."""

    def __post_init__(self) -> None:
        problems = []
        if self.name not in SOURCES:
            problems.append(f"data.name={self.name!r} is unknown; choose one of {list(SOURCES)}")
        if not (isinstance(self.val_fraction, float | int) and 0 < self.val_fraction < 1):
            problems.append(f"data.val_fraction={self.val_fraction!r} must be in (0, 1), e.g. 0.05")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            problems.append(f"data.num_workers={self.num_workers!r} must be an integer >= 0")
        raise_if(problems)
