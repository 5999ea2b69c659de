"""Steering-vector extraction methods: ActAdd (one prompt pair) and CAA (many A/B pairs)."""

from . import actadd, caa

__all__ = ["actadd", "caa"]
