"""Turning model outputs into numbers: behaviour scores and layer sweeps."""

from .behaviour import Variant, answer_logprobs, p_matching, propensity

__all__ = ["Variant", "answer_logprobs", "p_matching", "propensity"]
