"""Interventions through write hooks on the adapters' modules: circuits (EAP, EAP-IG)."""

from ._circuit import Circuit, load_circuit
from ._eap import circuit

__all__ = ["Circuit", "circuit", "load_circuit"]
