"""steerlab: activation engineering (ActAdd, CAA, PaCE, steering reliability) for Hugging Face causal LMs."""

__version__ = "0.1.0"

from .capture import capture  # noqa: E402
from .intervene import HookContext, Intervention, Window, add, apply_fn, clamp, project_out, steer  # noqa: E402
from .model import SteerModel, load_model  # noqa: E402
from .sources import ModelNotFoundError  # noqa: E402
from .vector import SteeringVector, VectorFileError  # noqa: E402

__all__ = [
    "__version__", "capture", "steer", "Intervention", "Window", "HookContext", "add", "project_out", "clamp",
    "apply_fn", "SteerModel", "load_model", "ModelNotFoundError", "SteeringVector", "VectorFileError",
]
