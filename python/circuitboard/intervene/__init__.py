"""Write hooks through the capture adapters: steering and generation."""

from ._generate import Generation, generate
from ._steering import SteeringVector, steering_vector

__all__ = ["Generation", "SteeringVector", "generate", "steering_vector"]
