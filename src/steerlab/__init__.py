"""steerlab: activation engineering (ActAdd, CAA, PaCE, steering reliability) for Hugging Face causal LMs."""

__version__ = "0.1.0"

from .capture import capture
from .errors import SteerlabError
from .intervene import HookContext, Intervention, Window, add, apply_fn, clamp, project_out
from .model import SteerModel, load_model
from .sources import ModelNotFoundError
from .steering import Scaled, as_steering, steer
from .vector import SteeringVector, VectorFileError

__all__ = [
    "HookContext",
    "Intervention",
    "ModelNotFoundError",
    "Scaled",
    "SteerlabError",
    "SteerModel",
    "SteeringVector",
    "VectorFileError",
    "Window",
    "__version__",
    "add",
    "apply_fn",
    "as_steering",
    "capture",
    "clamp",
    "load_model",
    "project_out",
    "steer",
]
