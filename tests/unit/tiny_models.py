"""The tiny test models, now shipped as :mod:`circuitboard.testing` (kept here for the suite).

>>> from tests.unit.tiny_models import tiny_llama
>>> model, tok = tiny_llama()
>>> model.config.num_hidden_layers
2
"""

from circuitboard.testing._models import *  # noqa: F403
from circuitboard.testing._models import CAUSAL, FACTORIES, MORE_TYPES  # noqa: F401


def unit_gain(model, seed: int = 0):
    """Redraw every matrix of ``model`` with unit gain (embeddings N(0, 1), the others scaled
    by 1.5 / sqrt(fan-in)), so interventions move the logits and the loss visibly; returns it.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                w = torch.randn(p.shape, generator=g)
                embedding = any(k in name for k in ("embed", "wte", "wpe", "embeddings"))
                p.copy_(w if embedding else w * 1.5 / p.shape[-1] ** 0.5)
    return model
