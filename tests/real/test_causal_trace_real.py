"""cb.causal_trace on the default model: where SmolLM2 keeps 'Eiffel Tower → Paris'."""

from __future__ import annotations

import numpy as np

import circuitboard as cb

PROMPT = "The Eiffel Tower is located in the city of"


def test_mlp_restoration_peaks_at_the_subject_in_early_layers(default_model) -> None:
    model, tok = default_model
    tr = cb.causal_trace(model, tok, PROMPT, subject="Eiffel Tower", kinds=("mlp",), samples=2)
    assert tr.answer == " Paris" and tr.clean_value > 0.5 and tr.corrupted_value < 0.1
    assert tr.subject == [1, 2, 3]  # ' E', 'iffel', ' Tower'
    mlp = tr.effect("mlp")
    peak = tr.peak("mlp")
    L = mlp.shape[0]
    # Meng et al. (GPT-2 XL): MLP restoration peaks at the subject's last token in early-middle
    # layers. SmolLM2 (2026-12-06, 5 samples): the peak is early too (layers 0-4 with a
    # 10-layer window, 0.67 of p = 0.70 at layer 2) but at the subject's middle token 'iffel':
    # ' Tower' carries little (≤ 0.02).
    assert peak["position"] in tr.subject and peak["layer"] < L // 3
    assert peak["value"] > 0.3
    assert mlp[: L // 3, 2].max() > 5 * max(mlp[:, 3].max(), 0.01)
    # After the subject, MLP restorations at the subject's positions fade with depth.
    assert mlp[L // 2 :, 2].max() < 0.5 * peak["value"]
    assert np.isfinite(tr.normalized).all()
