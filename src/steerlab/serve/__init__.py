"""``steerlab serve``: an OpenAI-compatible HTTP server with per-request steering and a playground.

The parts, each usable without HTTP: :mod:`.config` (settings), :mod:`.validate` (requests and their
steering specs), :mod:`.engine` (batched generation), :mod:`.shaping` (response bodies); :mod:`.app`
holds the routes. Importing this package does not import the web stack until it is used."""

from __future__ import annotations

from typing import Any

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "load_vectors", "render_messages"]


def __getattr__(name: str) -> Any:
    if name == "load_vectors":
        from ..vector import load_vector_folder

        return load_vector_folder
    if name in ("create_app", "render_messages"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
