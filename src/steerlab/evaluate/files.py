"""Writing evaluation results (one convention: :class:`Report`), with matplotlib set up for files (no screen)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

from ..safefile import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Report:
    """The convention every result object follows (sweeps, reliability, generalisation, cards, PaCE):

    ``table()`` the result as Markdown; ``plot(path)`` a PNG; ``save(folder, name=None)`` writes
    ``<stem>.json`` (the dataclass, plus :meth:`extra_json`), ``<stem>.png`` and ``<stem>.md`` (title,
    :meth:`intro`, table, figure) into ``folder`` and returns the ``.md`` path. ``name`` overrides the
    default stem: ``default_stem``, then ``-<file stem of its dataset>`` for a report with a ``dataset``
    field. Each file is written atomically (a killed run leaves the old file or the new one).
    """

    default_stem = "report"

    def title(self) -> str:
        raise NotImplementedError

    def intro(self) -> str:
        """Markdown between the title and the table (empty by default)."""
        return ""

    def table(self) -> str:
        raise NotImplementedError

    def plot(self, path: str | Path | BinaryIO) -> None:
        """Draw the figure into ``path`` (a file name or an open binary file), as PNG."""
        raise NotImplementedError

    def extra_json(self) -> dict:
        """Derived values saved beside the dataclass fields (none by default)."""
        return {}

    def stem(self) -> str:
        dataset = getattr(self, "dataset", None)
        return f"{self.default_stem}-{Path(dataset).stem}" if dataset else self.default_stem

    def _plot_to(self, tmp: str) -> None:
        # Through an open file: matplotlib takes the format from a path's suffix (".tmp" here), and
        # from its default, PNG, for a file object.
        with open(tmp, "wb") as fh:
            self.plot(fh)

    def save(self, folder: str | Path, name: str | None = None) -> Path:
        stem = name or self.stem()
        folder = Path(folder)
        data = json.dumps({**asdict(self), **self.extra_json()}, indent=2)  # type: ignore[call-overload]
        atomic_write(folder / f"{stem}.json", lambda tmp: Path(tmp).write_text(data))
        atomic_write(folder / f"{stem}.png", self._plot_to)
        parts = [f"# {self.title()}", self.intro(), self.table(), f"![{stem}]({stem}.png)"]
        md = "\n\n".join(p for p in parts if p) + "\n"
        return atomic_write(folder / f"{stem}.md", lambda tmp: Path(tmp).write_text(md))
