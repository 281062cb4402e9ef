"""The embedded corpus: text every Python installation already holds, so the main job needs no network.

It is the interpreter's own standard-library sources (code, comments and docstrings; about 10 MB) plus
the pydoc topic texts (the language reference prose behind `help()`). Test suites, site-packages,
codec tables and the generated pydoc module are left out: they are machine-specific or not prose/code.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

# directories under the standard library that are not its own code
SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings", "pydoc_data", "__pycache__"}
)


class Document(NamedTuple):
    doc_id: str
    """Stable identifier, e.g. `stdlib/json/decoder.py` or `pydoc/assert` (the split is decided by the text)."""
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def embedded_documents(root: Path | None = None) -> Iterator[Document]:
    """Yield the corpus in a fixed order (sorted ids), so every run on this interpreter sees the same text."""
    root = root or stdlib_root()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts[:-1]):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield Document(f"stdlib/{rel.as_posix()}", text)
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield Document(f"pydoc/{key}", topics[key])
