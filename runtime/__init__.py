"""Run moedge bundles on the CPU: onnxruntime for the dense graphs, numba for lazy int8 experts."""

from .bundle import BundleError
from .errors import InputError
from .generate import Token
from .model import Model
from .session import Session
from .spec import ModelSpec, RoutingSpec

__all__ = ["BundleError", "InputError", "Model", "ModelSpec", "RoutingSpec", "Session", "Token"]
