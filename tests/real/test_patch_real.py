"""cb.patch on the default model (SmolLM2-135M): IOI heads, the identities, attribution vs exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.intervene import Edit, Runner, Site, evaluate, logit_diff, normalize
from tests.conftest import IOI_PROMPT

pytestmark = pytest.mark.real

CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def ioi_heads(default_model):
    model, tok = default_model
    kw = dict(answer=" Mary", wrong=" John", site="heads")
    exact = cb.patch(model, tok, IOI_PROMPT, CORRUPT, **kw)
    attr = cb.patch(model, tok, IOI_PROMPT, CORRUPT, method="attribution", **kw)
    return exact, attr


def test_ioi_top_heads_and_attribution_correlation(ioi_heads):
    exact, attr = ioi_heads
    assert exact.values.shape == (30, 9)
    assert exact.clean_value > 1 and exact.corrupted_value < -1  # Mary vs John, then John
    top = exact.top(5)
    print("IOI top heads (exact, denoise):", [(d["label"], round(d["value"], 3)) for d in top])
    # the strongest head restores more than a third of the logit difference on its own, late
    assert top[0]["value"] > 0.35 and top[0]["layer"] >= 15
    r = float(np.corrcoef(exact.values.ravel(), attr.values.ravel())[0, 1])
    print(f"attribution vs exact on heads: r = {r:.4f}")
    assert r >= 0.95
    assert {d["label"] for d in attr.top(3)} & {d["label"] for d in exact.top(5)}


def test_identities_on_the_default_model(default_model):
    model, tok = default_model
    r = Runner(model)
    metric = logit_diff(
        *(tok(w, add_special_tokens=False)["input_ids"][0] for w in (" Mary", " John"))
    )
    clean = torch.tensor(tok(IOI_PROMPT)["input_ids"])
    corrupt = torch.tensor(tok(CORRUPT)["input_ids"])
    sites = [
        Site(k, layer) for k in ("resid_pre", "resid_mid", "resid_post") for layer in (0, 14, 29)
    ]
    ca, cl = r.read(clean, sites)
    xa, xl = r.read(corrupt, sites)
    m_clean, m_corr = float(metric(cl)), float(metric(xl))
    # 1: a residual stream at every position: denoising 1, noising 0
    den = r.patched(corrupt, [[Edit(s, "replace", ca[s])] for s in sites], metric).double()
    noi = r.patched(clean, [[Edit(s, "replace", xa[s])] for s in sites], metric).double()
    np.testing.assert_allclose(normalize(den.numpy(), m_clean, m_corr), 1, atol=1e-5)
    np.testing.assert_allclose(normalize(noi.numpy(), m_clean, m_corr), 0, atol=1e-5)
    # 6: at the unembedding's input the logit difference is affine: attribution == exact
    site = Site("unembed_in", pos=-1)
    src, _ = r.read(clean, [site])
    g = Edit(Site("unembed_in"), "grad")
    m = evaluate(metric, r.logits(corrupt, [g]))[0]
    (grad,) = torch.autograd.grad(m, g.delta)
    attribution = float(((src[site] - g.activation[0, -1:]) * grad[0, -1:]).sum())
    exact = float(r.patched(corrupt, [[Edit(site, "replace", src[site])]], metric)[0])
    assert abs(attribution - (exact - float(m.detach()))) / (m_clean - m_corr) < 1e-5


@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_prefix_zero_swap_one_last_one(default_model, method):
    model, tok = default_model
    res = cb.patch(
        model,
        tok,
        IOI_PROMPT,
        CORRUPT,
        answer=" Mary",
        wrong=" John",
        site="resid_pre",
        layers=[0, 29],
        method=method,
    )
    # 3: before the first differing token, exactly 0
    assert res.first_diff == 9 and np.all(res.values[:, :9] == 0)
    if method == "exact":
        # the one-token swap patched at layer 0 of the swapped position gives 1, all else 0
        assert abs(res.values[0, 9] - 1) < 1e-5
        assert np.abs(np.delete(res.values[0], 9)).max() < 1e-5
        post = cb.patch(
            model,
            tok,
            IOI_PROMPT,
            CORRUPT,
            answer=" Mary",
            wrong=" John",
            site="resid_post",
            layers=[-1],
            positions=[-1],
        )
        assert abs(post.values[0, 0] - 1) < 1e-5  # 2: last layer, last position
