"""``steerlab serve``: an OpenAI-compatible HTTP server with per-request steering and a playground."""

from .app import Limits, create_app, load_vectors, render_messages

__all__ = ["Limits", "create_app", "load_vectors", "render_messages"]
