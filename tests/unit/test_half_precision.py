"""Half-precision models: capture equals the model's own bf16 / fp16 forward, and every
decomposition sums to the model's value within a tolerance derived from the dtype's epsilon."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.widgets._checks import attribution_checks
from tests.unit.tiny_models import tiny_gpt2, tiny_llama

CLEAN = "When Mary and John went to the store"
CORRUPTED = "When John and Mary went to the store"
HALF = [torch.bfloat16, torch.float16]


def _sharpened(build: Any, dtype: torch.dtype) -> tuple[Any, Any]:
    """A tiny model whose logits differ by whole units (random tiny models give gaps of 1e-3,
    which no half-precision model resolves), cast to ``dtype``."""
    model, tok = build()
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone() * 300.0)
    return model.to(dtype).eval(), tok


@pytest.fixture(scope="module", params=[(b, d) for b in (tiny_llama, tiny_gpt2) for d in HALF])
def half(request: Any) -> tuple[Any, Any, torch.dtype]:
    build, dtype = request.param
    model, tok = _sharpened(build, dtype)
    return model, tok, dtype


def _ids(tok: Any, text: str) -> torch.Tensor:
    return tok(text, return_tensors="pt").input_ids


def test_capture_equals_the_models_own_half_forward(half: Any) -> None:
    model, tok, dtype = half
    with torch.no_grad():
        out = model(_ids(tok, CLEAN), output_hidden_states=True)
    cap = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    assert torch.equal(cap.logits.float(), out.logits[0].float())
    for layer in range(model.config.num_hidden_layers - 1):
        got = cap.tensors[f"blocks.{layer}.hook_resid_post"]
        assert torch.equal(got, out.hidden_states[layer + 1][0].float()), layer
    assert cap.info.compute_dtype == str(dtype).removeprefix("torch.")
    assert next(model.parameters()).dtype == dtype, "capture must not upcast the model"


def test_dla_sums_to_the_models_value_within_the_dtypes_tolerance(half: Any) -> None:
    model, tok, dtype = half
    cap = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    ids = cap.token_ids.tolist()
    attr = cb.direct_logit_attribution(cap, ids[1], ids[3])
    eps = torch.finfo(dtype).eps
    assert attr.dtype == str(dtype).removeprefix("torch.")
    assert attr.tolerance >= eps * abs(attr.model_value)
    assert attr.tolerance <= 0.25 * abs(attr.model_value), "a bound too loose to mean anything"
    assert abs(float(attr.values.double().sum()) - attr.model_value) <= attr.tolerance
    # The same bound drives the report's badge, which a float32 tolerance would fail.
    view = cb.logit_attribution(cap, ids[1], ids[3], follow_token=False)
    state = {"model_value": view.model_value, "dtype": view.dtype, "tolerance": view.tolerance}
    state.update(_heads=view._heads, _layers=view._layers, _terms=view._terms)
    assert all(c["ok"] for c in attribution_checks(state))


def test_float32_attribution_keeps_its_tight_bound() -> None:
    model, tok = _sharpened(tiny_llama, torch.float32)
    cap = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    ids = cap.token_ids.tolist()
    attr = cb.direct_logit_attribution(cap, ids[1], ids[3])
    assert attr.dtype == "float32"
    assert attr.tolerance == pytest.approx(1e-4 * max(1.0, abs(attr.model_value)), rel=0.5)
    assert abs(float(attr.values.double().sum()) - attr.model_value) <= 1e-4 * abs(attr.model_value)


def _contrast(model: Any, tok: Any) -> dict[str, int]:
    """The answer / wrong tokens the two prompts separate most (a gap the dtype resolves)."""
    with torch.no_grad():
        diff = model(_ids(tok, CLEAN)).logits[0, -1] - model(_ids(tok, CORRUPTED)).logits[0, -1]
    return {"answer": int(diff.float().argmax()), "wrong": int(diff.float().argmin())}


def test_patching_identities_hold_in_half_precision(half: Any) -> None:
    model, tok, _ = half
    res = cb.patch(model, tok, CLEAN, CORRUPTED, site="resid_post", **_contrast(model, tok))
    # Identity 2: the last layer's residual at the last position carries the whole answer.
    assert res.values[-1, -1] == pytest.approx(1.0, abs=1e-6)
    # Identity 3: positions before the first differing token change nothing, exactly.
    assert np.all(res.values[:, : res.first_diff] == 0.0)


def test_eap_full_circuit_is_the_clean_metric_in_half_precision(half: Any) -> None:
    model, tok, _ = half
    c = cb.circuit(model, tok, CLEAN, CORRUPTED, **_contrast(model, tok))
    full = c.evaluate(c.n_edges)
    assert full == pytest.approx(1.0, abs=1e-6)


def test_attention_explanation_sums_to_the_score_within_the_dtypes_tolerance(half: Any) -> None:
    model, tok, dtype = half
    cap = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    e = cb.explain_attention(cap, layer=1, head=0, query=6, key=2)
    # Queries and keys are the model's own (rounded to its dtype); their dot product in float64
    # may differ from the kernel's by eps per term.
    bound = torch.finfo(dtype).eps * float(np.abs(e.matrix).sum() + 1.0)
    assert abs(e.total - e.score) <= bound


def test_a_float16_overflow_names_the_dtype_fix() -> None:
    model, tok = tiny_llama()
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone() * 1e6)
    model = model.to(torch.float16).eval()
    ids = _ids(tok, CLEAN)[0]
    with pytest.raises(ValueError, match=r"overflowed in its dtype.*bfloat16 or float32"):
        cb.patch(model, tok, CLEAN, CORRUPTED, answer=int(ids[2]), wrong=int(ids[4]))


def test_a_metric_that_overflows_itself_is_refused_with_the_fix() -> None:
    model, tok = _sharpened(tiny_llama, torch.float16)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits.half().exp().sum()  # exp of raw float16 logits: inf

    with pytest.raises(ValueError, match=r"metric itself overflowed.*logits\.float\(\)"):
        cb.patch(model, tok, CLEAN, CORRUPTED, metric=metric, site="heads")
