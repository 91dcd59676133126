"""Run moedge bundles on the CPU: onnxruntime for the dense graphs, numba for lazy int8 experts."""

from .errors import BundleError, InputError, MoedgeError, NumericalError
from .generate import Token
from .model import Model
from .session import Session
from .spec import ModelSpec, RoutingSpec, SpecError

__all__ = ["BundleError", "InputError", "Model", "ModelSpec", "MoedgeError", "NumericalError", "RoutingSpec",
           "Session", "SpecError", "Token"]
