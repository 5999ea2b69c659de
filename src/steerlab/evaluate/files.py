"""Writing evaluation results: JSON beside a PNG, with matplotlib set up for files (no screen)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_json_and_plot(report, folder: str | Path, stem: str) -> Path:
    """``<stem>.json`` (the dataclass ``report``) and ``<stem>.png`` (its ``plot``) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(asdict(report), indent=2))
    report.plot(folder / f"{stem}.png")
    return folder
