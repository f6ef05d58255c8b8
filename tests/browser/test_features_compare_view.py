"""CompareView of a comparison made with saes=: the top features list follows the measure, its
labels stay text (hostile ones included), a click selects the feature in a linked features view."""

from __future__ import annotations

import torch

import circuitboard as cb
from tests.conftest import open_report
from tests.hostile import HOSTILE_TOKENS, shown
from tests.unit.sae_helpers import ReluSAE
from tests.unit.tiny_models import tiny_llama

A = ["When Mary and John went to the store", "the quick brown fox", "1 2 3 4", "a b c d"]
B = ["Hello world", "def f(x): return x", "the the the and", "naïve café"]


def test_compare_lists_features_with_labels_as_text(page, tmp_path, artifacts):
    model, tok = tiny_llama()
    sae = ReluSAE(32, 64, "blocks.1.hook_resid_post", seed=1)
    sae.metadata["labels"] = {i: HOSTILE_TOKENS[i % len(HOSTILE_TOKENS)] for i in range(64)}
    cmp = cb.compare(model, tok, {"A": A, "B": B}, saes=[sae])
    link = cb.Link()
    view = cb.compare_view(cmp, link=link, k=8)
    cap = cb.capture(model, tok, A[0], saes=[sae], dtype=torch.float32)
    feats = cb.features(cap, link=link)
    open_report(page, cb.report(view, feats, path=tmp_path / "cmp-features.html"))
    root = ".cb-cmp"
    page.wait_for_selector(f"{root}[data-ready=true]")
    want = cmp.top("A", "B", "features", k=8)
    rows = page.eval_on_selector_all(
        f"{root} .cb-cmp-features .cb-cmp-row", "els => els.map(e => +e.dataset.feature)"
    )
    assert rows == [t["feature"] for t in want]
    labels = page.eval_on_selector_all(
        f"{root} .cb-cmp-features .cb-cmp-fname", "els => els.map(e => e.textContent.trim())"
    )
    assert labels == [shown(t["name"]).strip() for t in want if t["name"]]
    assert page.evaluate("() => window.__pwned === undefined")
    assert page.eval_on_selector_all(f"{root} img, {root} iframe, {root} b", "e => e.length") == 0
    # the measure picker re-ranks (embedded replies: the page needs no kernel)
    page.select_option('select[aria-label="measure"]', "t")
    want_t = [t["feature"] for t in cmp.top("A", "B", "features", k=8, by="t")]
    page.wait_for_function(
        "(w) => [...document.querySelectorAll('.cb-cmp-features .cb-cmp-row')]"
        ".map(e => +e.dataset.feature).join() === w.join()",
        arg=want_t,
    )
    # a click selects the feature: the linked features view shows it
    first = want_t[0]
    page.click(f"{root} .cb-cmp-features .cb-cmp-row >> nth=0")
    page.wait_for_selector(f'.cb-features[data-feature="{first}"]')
    page.wait_for_selector(f'{root} .cb-cmp-features .cb-cmp-row-active[data-feature="{first}"]')
    page.screenshot(path=str(artifacts / "compare_features.png"), full_page=True)
    page.hover(f"{root} .cb-cmp-features .cb-cmp-row >> nth=1")
    assert f"L1 F{want_t[1]} · blocks.1.hook_resid_post" in page.inner_text(".cb-cmp-readout")
    page.screenshot(path=str(artifacts / "compare_features.png"), full_page=True)
    assert not page.cb_errors, page.cb_errors
    assert not page.cb_blocked, page.cb_blocked
