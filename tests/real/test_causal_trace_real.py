"""cb.causal_trace on the default model: where SmolLM2 recalls 'Colosseum → Rome'."""

from __future__ import annotations

import numpy as np

import circuitboard as cb

PROMPT = "The Colosseum is located in the city of"


def test_mlp_restoration_peaks_at_the_subjects_last_token_in_early_layers(default_model) -> None:
    model, tok = default_model
    tr = cb.causal_trace(model, tok, PROMPT, subject="Colosseum", kinds=("mlp",), samples=2)
    assert tr.answer == " Rome" and tr.clean_value > 0.5 and tr.corrupted_value < 0.1
    assert [tr.tokens[i] for i in tr.subject] == [" Col", "osse", "um"]
    mlp = tr.effect("mlp")
    peak = tr.peak("mlp")
    L, last = mlp.shape[0], tr.subject[-1]
    # Meng et al. (GPT-2 XL): restoring MLP outputs helps most at the subject's last token in
    # early-middle layers. SmolLM2 (2026-12-06, 5 samples, 10-layer windows): peak 0.54 of
    # p = 0.73 at 'um' layer 4, still 0.34 at layer 10; other subject tokens ≤ 0.16.
    assert peak["position"] == last and 1 <= peak["layer"] < L // 2
    assert peak["value"] > 0.3
    assert mlp[:, last].max() > 2 * mlp[:, :last].max()
    # ... and fades in the second half of the layers.
    assert mlp[2 * L // 3 :, last].max() < 0.25 * peak["value"]
    assert np.isfinite(tr.normalized).all()
