"""The tiny test models, now shipped as :mod:`circuitboard.testing` (kept here for the suite).

>>> from tests.unit.tiny_models import tiny_llama
>>> model, tok = tiny_llama()
>>> model.config.num_hidden_layers
2
"""

from circuitboard.testing._models import *  # noqa: F403
from circuitboard.testing._models import CAUSAL, FACTORIES, MORE_TYPES  # noqa: F401
