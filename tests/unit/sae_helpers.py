"""Small dictionaries for tests: a random ReLU SAE and an identity dictionary (features = units).

They follow the dictionary protocol capture and analyses use (``encode``, ``decode``, ``hook``,
``d_in``, ``d_sae``) without training, so tests of part 2 do not depend on a training run.
"""

from __future__ import annotations

import torch


class ReluSAE(torch.nn.Module):
    """``acts = relu((x - b_dec) @ W_enc + b_enc)``, ``recons = acts @ W_dec + b_dec``."""

    kind = "relu"

    def __init__(self, d_in: int, d_sae: int, hook: str, seed: int = 0, d_out: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d_out = d_out or d_in
        self.hook, self.d_in, self.d_sae, self.d_out = hook, d_in, d_sae, d_out
        self.W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        # negative biases keep most features silent, as in a trained SAE
        self.b_enc = torch.nn.Parameter(-0.5 * torch.rand(d_sae, generator=g))
        self.W_dec = torch.nn.Parameter(torch.randn(d_sae, d_out, generator=g) / d_sae**0.5)
        self.b_dec = torch.nn.Parameter(0.1 * torch.randn(d_out, generator=g))
        self.metadata: dict = {}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b_dec if self.d_out == self.d_in else 0.0
        return torch.relu((x - b) @ self.W_enc + self.b_enc)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec


class Transcoder(ReluSAE):
    """Reads ``hook`` (the MLP's input side), reconstructs ``hook_out`` (its output)."""

    def __init__(self, d_in: int, d_sae: int, hook: str, hook_out: str, seed: int = 0):
        super().__init__(d_in, d_sae, hook, seed)
        self.hook_out = hook_out


class IdentityDictionary(torch.nn.Module):
    """Features are the hooked tensor's own units: ``encode(x) = x``, ``decode(a) = a``."""

    kind = "identity"

    def __init__(self, d: int, hook: str):
        super().__init__()
        self.hook, self.d_in, self.d_sae = hook, d, d
        self.W_dec = torch.nn.Parameter(torch.eye(d))
        self.b_dec = torch.nn.Parameter(torch.zeros(d))
        self.metadata: dict = {}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec
