"""Issue 24 item 9: targets that are directions, ``cb.Direction(vector)`` (a logit direction
over the vocabulary, or a residual-stream direction read after the final norm). Exact in
float32: the parts sum to the direction's value on the model's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.testing import tiny_model

CLEAN = "When Mary and John went to the store, John gave"
CORRUPT = "When Mary and John went to the store, Mary gave"


def _ids(tok, *words):
    return [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]


def _unembed_input(model, tok, text):
    """What the unembedding reads at the last position (the final norm's output)."""
    seen = {}
    head = model.get_output_embeddings()
    h = head.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    try:
        with torch.no_grad():
            model(**tok(text, return_tensors="pt"))
    finally:
        h.remove()
    return seen["x"][0, -1].double()


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # gpt2: LayerNorm bias and b_U
def test_dla_of_a_direction_sums_to_its_value(family):
    model, tok = tiny_model(family)
    cap = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    V, D = cap.logits.shape[-1], model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    mary, john = _ids(tok, " Mary", " John")
    v = 0.05 * torch.randn(V, generator=g)
    v[mary] += 1.0
    v[john] -= 1.0  # a logit difference, blurred
    logit = cb.direct_logit_attribution(cap, cb.Direction(v, name="Mary − John, blurred"))
    want = float(cap.logits[-1].double() @ v.double())
    assert abs(logit.model_value - want) <= 1e-6 * abs(want)
    assert abs(logit.total - want) <= 1e-5 * abs(want)
    assert logit.description.startswith("logit direction 'Mary − John, blurred'")
    # the one-hot difference is the token pair's attribution, part by part
    e = torch.zeros(V)
    e[mary], e[john] = 1.0, -1.0
    pair = cb.direct_logit_attribution(cap, " Mary", baseline=" John")
    np.testing.assert_allclose(
        cb.direct_logit_attribution(cap, cb.Direction(e)).values, pair.values, atol=1e-5
    )
    r = torch.randn(D, generator=g)
    resid = cb.direct_logit_attribution(cap, cb.Direction(r, name="probe"))
    want = float(_unembed_input(model, tok, CLEAN) @ r.double())
    assert abs(resid.model_value - want) <= 1e-5 * abs(want)
    assert abs(resid.total - want) <= 1e-5 * abs(want)
    assert "unembed.b_U" not in resid.biases  # read before the unembedding
    assert resid.description.startswith("residual direction 'probe'")


def test_direction_errors_say_what_to_give():
    model, tok = tiny_model("llama")
    cap = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"has 7 entries; this model needs d_vocab=\d+"):
        cb.direct_logit_attribution(cap, cb.Direction(torch.ones(7)))
    with pytest.raises(ValueError, match="takes no baseline=: fold it into the vector"):
        cb.direct_logit_attribution(cap, cb.Direction(torch.ones(32)), baseline=" John")
    with pytest.raises(ValueError, match=r"baseline= takes tokens.*target=cb.Direction"):
        cb.direct_logit_attribution(cap, " Mary", baseline=cb.Direction(torch.ones(32)))
    with pytest.raises(ValueError, match="1-D vector"):
        cb.Direction(torch.ones(2, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        cb.Direction([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"both this model's d_vocab and its d_model; say which"):
        cb.Direction(torch.ones(8)).resolve(d_model=8, d_vocab=8)
    assert cb.Direction(torch.ones(8), space="resid").resolve(8, 8).space == "resid"
    with pytest.raises(ValueError, match=r"space='vocab'\) has 8 entries.*vocabulary is 9"):
        cb.Direction(torch.ones(8), space="vocab").resolve(8, 9)
    a, b = cb.Direction([1.0, 2.0]), cb.Direction([1.0, 3.0])
    assert repr(a) != repr(b)  # checkpoint keys tell directions apart


def test_patch_and_circuit_along_a_logit_direction():
    model, tok = tiny_model("llama")
    V = model.config.vocab_size
    mary, john, the = _ids(tok, " Mary", " John", " the")
    v = torch.zeros(V)
    v[mary], v[john], v[the] = 1.0, -0.5, -0.5
    d = cb.Direction(v, name="Mary vs John and the")
    p = cb.patch(model, tok, CLEAN, CORRUPT, answer=d, site="resid_pre")
    q = cb.patch(model, tok, CLEAN, CORRUPT, answer=" Mary", wrong=[" John", " the"],
                 site="resid_pre")  # fmt: skip
    np.testing.assert_allclose(p.raw, q.raw, atol=1e-5)  # the same quantity, as a set target
    assert "logit direction 'Mary vs John and the'" in p.metric
    c = cb.circuit(model, tok, CLEAN, CORRUPT, answer=d)
    e = cb.circuit(model, tok, CLEAN, CORRUPT, answer=" Mary", wrong=[" John", " the"])
    np.testing.assert_allclose(c.scores, e.scores, atol=1e-5)
    assert abs(c.clean_value - e.clean_value) < 1e-5
    resid = cb.Direction(torch.ones(model.config.hidden_size))
    with pytest.raises(ValueError, match="residual-stream direction: its value is read before"):
        cb.patch(model, tok, CLEAN, CORRUPT, answer=resid, site="resid_pre")
    with pytest.raises(ValueError, match="residual-stream direction"):
        cb.circuit(model, tok, CLEAN, CORRUPT, answer=resid)
    with pytest.raises(ValueError, match="takes no wrong="):
        cb.patch(model, tok, CLEAN, CORRUPT, answer=d, wrong=" John", site="resid_pre")


def test_head_output_explanation_along_a_direction_is_the_heads_dla():
    """explain_head_output's value along a direction is that head's direct attribution."""
    model, tok = tiny_model("llama")
    cap = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    for v in (torch.randn(cap.logits.shape[-1], generator=g), torch.randn(32, generator=g)):
        d = cb.Direction(v)
        attr = cb.direct_logit_attribution(cap, d)
        for layer, head in ((0, 1), (1, 3)):
            ov = cb.explain_head_output(cap, layer=layer, head=head, query=-1, target=d)
            assert ov.model_value == pytest.approx(attr[f"L{layer}H{head}"], abs=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_generation_attribution_along_a_direction_sums(layer):
    """gen.attribution(step, target=cb.Direction(v)), steered or not: the parts (steer
    included) sum to logits · v, or to the unembedding input · v for a residual direction."""
    from circuitboard.intervene import generate

    model, tok = tiny_model("llama")
    g = torch.Generator().manual_seed(3)
    steer = torch.randn(model.config.hidden_size, generator=g)
    v, r = torch.randn(model.config.vocab_size, generator=g), torch.randn(32, generator=g)
    kw = dict(max_new_tokens=2, stop_at_eos=False)
    plain = generate(model, tok, CLEAN, **kw)
    steered = generate(model, tok, CLEAN, steer=steer, layer=layer, **kw)
    for gen in (plain, steered):
        for s in range(2):
            a = gen.attribution(s, target=cb.Direction(v))
            want = float(gen.logits(s).double() @ v.double())
            assert abs(a.model_value - want) <= 1e-5 * max(1.0, abs(want))
            assert abs(a.total - want) <= 1e-5 * max(1.0, float(a.values.abs().sum()))
            b = gen.attribution(s, target=cb.Direction(r))
            assert abs(b.total - b.model_value) <= 1e-5 * max(1.0, float(b.values.abs().sum()))
        assert ("steer" in a.labels) == (gen is steered)
        assert gen is plain or abs(a["steer"]) > 0  # the steering's direct part is counted
