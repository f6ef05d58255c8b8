"""Features view in an exported page (network off): real activations colour the tokens, hover
and click link with the neurons and attribution views, hostile text stays text."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

import circuitboard as cb
from tests.conftest import open_report
from tests.hostile import HOSTILE_TOKENS, shown
from tests.unit.sae_helpers import ReluSAE
from tests.unit.tiny_models import tiny_llama

PROMPT = "When Mary and John went to the store, John gave a drink to"


@functools.cache
def _board():
    model, tok = tiny_llama()
    sae = ReluSAE(32, 256, "blocks.1.hook_resid_post", seed=5)
    sae.metadata["labels"] = {i: HOSTILE_TOKENS[i % len(HOSTILE_TOKENS)] for i in range(256)}
    cap = cb.capture(model, tok, PROMPT, saes=[sae], dtype=torch.float32)
    return cap, sae


def test_features_render_link_and_search(page, tmp_path, artifacts):
    cap, sae = _board()
    view = cb.features(cap)
    neurons = cb.neurons(cap)
    attr = cb.logit_attribution(cap, int(cap.token_ids[3]), baseline=int(cap.token_ids[4]))
    cb.link(view, neurons, attr)
    feature = view.selection["feature"]
    acts = cap[f"{sae.hook}.sae.hook_sae_acts_post"].to_dense().numpy()
    path = cb.report(view, neurons, attr, path=tmp_path / "features.html")
    open_report(page, path)
    root = ".cb-features"
    page.wait_for_selector(f'{root}[data-ready=true][data-feature="{feature}"]')
    # real activations: the vmax is the feature's largest activation, silent tokens unpainted
    vmax = float(page.get_attribute(root, "data-vmax"))
    assert abs(vmax - float(acts[:, feature].max())) < 1e-5
    titles = page.eval_on_selector_all(f"{root} .cb-token", "els => els.map(e => e.title)")
    for i, title in enumerate(titles):
        assert title.endswith(f"{acts[i, feature]:.2f}")
    # hover a token: the top features there are the capture's, strongest first
    page.hover(f"{root} .cb-token >> nth=6")
    page.wait_for_selector(f'{root}[data-token="6"]')
    listed = page.eval_on_selector_all(
        f"{root} .cb-feature-top .cb-feature-pick", "els => els.map(e => +e.dataset.feature)"
    )
    expect = np.argsort(-acts[6], kind="stable")[: len(listed)]
    assert listed == [int(i) for i in expect if acts[6, i] > 0][: len(listed)]
    # the hover reaches the neurons view (browser-only link)
    page.wait_for_selector('.cb-neurons[data-token="6"]')
    # hostile labels stay text
    labels = page.eval_on_selector_all(
        f"{root} .cb-feature-label", "els => els.map(e => e.textContent)"
    )
    assert labels and all(t in {shown(h) for h in HOSTILE_TOKENS} for t in labels)
    assert page.evaluate("() => window.__pwned === undefined")
    assert (
        page.eval_on_selector_all(
            f"{root} img, {root} svg, {root} iframe, {root} b", "e => e.length"
        )
        == 0
    )
    # click another feature in the list (token 6 locked first: a hover ends when the pointer
    # leaves the tokens): the view follows, the selection carries it
    page.click(f"{root} .cb-token >> nth=6")
    page.wait_for_selector(f"{root} .cb-feature-top .cb-feature-pick")
    other = listed[1]
    page.click(f'{root} .cb-feature-top .cb-feature-pick[data-feature="{other}"]')
    page.wait_for_selector(f'{root}[data-feature="{other}"]')
    # search by index, and "fires on this token"
    page.fill(f"{root} input[type=search]", str(other))
    page.wait_for_function(
        f"() => document.querySelector('{root} .cb-feature-found').dataset.count === '1'"
    )
    page.fill(f"{root} input[type=search]", "")
    page.check(f"{root} input[type=checkbox]")
    n_here = int((acts[6] > 0).sum())
    page.wait_for_function(
        f"() => document.querySelector('{root} .cb-feature-found').dataset.count === '{n_here}'"
    )
    # a neuron click in the neurons view does not move the feature; the layer follows
    page.click(".cb-neurons .cb-neuron-pick >> nth=0")
    page.wait_for_selector(f'{root}[data-feature="{other}"]')
    page.screenshot(path=str(artifacts / "features_view.png"), full_page=True)
    assert not page.cb_errors, page.cb_errors
    assert not page.cb_blocked, page.cb_blocked


def test_hostile_tokens_stay_text(page, tmp_path):
    cap, _ = _board()
    tokens = (HOSTILE_TOKENS * 3)[: cap.n_tokens]
    cap = dataclasses.replace(cap, tokens=tokens)
    path = cb.report(cb.features(cap), path=tmp_path / "hostile.html")
    open_report(page, path)
    page.wait_for_selector(".cb-features[data-ready=true]")
    texts = page.eval_on_selector_all(
        ".cb-features .cb-token", "els => els.map(e => e.textContent)"
    )
    assert texts == [shown(t) for t in tokens] or len(texts) == len(tokens)
    assert page.evaluate("() => window.__pwned === undefined")
    assert not page.cb_errors, page.cb_errors


def test_feature_dashboard_draws_histogram_and_logit_tables(page, tmp_path, artifacts):
    from tests.unit.tiny_models import tiny_llama as factory

    model, tok = factory()
    sae = cb.SAE(32, 64, kind="topk", k=4, hook="blocks.1.hook_resid_post", seed=0)
    texts = cb.load_texts()[:30]
    top = cb.top_activations(model, tok, texts, features=(sae, None), k=5, progress=False)
    feature = int(np.nanargmax(top.values[:, 0]))
    dash = cb.feature_dashboard(top, feature=feature)
    open_report(page, cb.report(dash, path=tmp_path / "feature-dash.html"))
    page.wait_for_selector(f'.cb-dashboard[data-neuron="{feature}"]')
    rows = page.eval_on_selector_all(".cb-dash-row", "els => els.map(e => Number(e.dataset.text))")
    assert rows == [t for t in top.text_index[top.index(1, feature)].tolist() if t >= 0]
    # the histogram canvas has ink, and both logit tables list the decoder row's tokens
    ink = page.evaluate(
        """() => { const c = document.querySelector('.cb-dash-hist');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""
    )
    assert ink > 50
    n_logits = page.eval_on_selector_all(".cb-dash-logit", "els => els.length")
    assert n_logits == 2 * top.promoted.shape[1]
    page.screenshot(path=str(artifacts / "feature-dashboard.png"), full_page=True)
    assert not page.cb_errors and not page.cb_blocked


def test_feature_dashboard_shows_labels_as_text_and_cofiring(page, tmp_path, artifacts):
    """Hostile labels stay text in the picker, the header and the co-firing list; the list is
    the records' co-firing ranking, and a click opens a co-firing feature."""
    from tests.unit.tiny_models import tiny_llama as factory

    model, tok = factory()
    sae = cb.SAE(32, 64, kind="topk", k=4, hook="blocks.1.hook_resid_post", seed=0)
    sae.labels = [HOSTILE_TOKENS[i % len(HOSTILE_TOKENS)] for i in range(64)]
    texts = cb.load_texts()[:30]
    top = cb.top_activations(model, tok, texts, features=(sae, None), k=5, progress=False)
    feature = int(np.argmax(top.positive))
    dash = cb.feature_dashboard(top, feature=feature)
    open_report(page, cb.report(dash, path=tmp_path / "feature-dash-labels.html"))
    root = f'.cb-dashboard[data-neuron="{feature}"]'
    page.wait_for_selector(root)
    assert page.inner_text(".cb-dashboard .cb-title") == "Feature"
    assert page.text_content(".cb-dash-label") == shown(dash.label(feature))
    options = page.eval_on_selector_all(
        ".cb-dashboard select option", "els => els.map(e => e.textContent)"
    )
    label = shown(dash.label(feature))
    label = label if len(label) <= 48 else label[:47] + "…"
    assert options[feature] == f"L1 F{feature} · {label}"
    co = top.cofiring(1, feature, k=8)
    listed = page.eval_on_selector_all(
        ".cb-dash-co", "els => els.map(e => [+e.dataset.feature, e.children[1].textContent])"
    )
    assert listed == [[c["feature"], shown(c["label"])] for c in co]
    assert page.evaluate("() => window.__pwned === undefined")
    assert page.eval_on_selector_all(".cb-dashboard img, .cb-dashboard b", "e => e.length") == 0
    page.screenshot(path=str(artifacts / "feature-dashboard-labels.png"), full_page=True)
    page.click(".cb-dash-co >> nth=0")
    page.wait_for_selector(f'.cb-dashboard[data-neuron="{co[0]["feature"]}"]')
    assert not page.cb_errors and not page.cb_blocked


def test_attribution_lists_top_features_with_labels_as_text(page, tmp_path, artifacts):
    """cb.logit_attribution(..., saes=True) lists the features of direct_logit_attribution's
    split, strongest first, labels as text; it follows the locked token; a click selects."""
    cap, sae = _board()
    target, baseline = int(cap.token_ids[3]), int(cap.token_ids[4])
    link = cb.Link()
    attr_view = cb.logit_attribution(cap, target, baseline, saes=True, link=link)
    feats = cb.features(cap, link=link)
    open_report(page, cb.report(attr_view, feats, path=tmp_path / "dla-features.html"))
    page.wait_for_selector(".cb-dla[data-ready=true]")
    split = cb.direct_logit_attribution(cap, target, baseline, saes=True).features(1)
    want = [t["feature"] for t in split.top(12) if t["value"] != 0]
    rows = page.eval_on_selector_all(
        ".cb-dla-features .cb-dla-row", "els => els.map(e => +e.dataset.feature)"
    )
    assert rows == want
    names = page.eval_on_selector_all(
        ".cb-dla-features .cb-dla-fname", "els => els.map(e => e.textContent.slice(1))"
    )
    assert names == [shown(split.names[f]) for f in want if split.names.get(f)]
    assert page.evaluate("() => window.__pwned === undefined")
    assert page.eval_on_selector_all(".cb-dla img, .cb-dla b, .cb-dla svg", "e => e.length") == 0
    page.screenshot(path=str(artifacts / "dla-features.png"), full_page=True)
    # a locked token re-attributes: the list becomes that position's split
    page.click(".cb-features .cb-token >> nth=5")
    page.wait_for_selector('.cb-dla[data-pos="5"]')
    at5 = cb.direct_logit_attribution(cap, target, baseline, pos=5, saes=True).features(1)
    want5 = [t["feature"] for t in at5.top(12) if t["value"] != 0]
    rows = page.eval_on_selector_all(
        ".cb-dla-features .cb-dla-row", "els => els.map(e => +e.dataset.feature)"
    )
    assert rows == want5
    page.click(".cb-dla-features .cb-dla-row >> nth=0")
    page.wait_for_selector(f'.cb-features[data-feature="{want5[0]}"]')
    assert not page.cb_errors and not page.cb_blocked
