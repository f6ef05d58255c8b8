"""cb.compare on the default model: IOI prompts answered by the first name vs by the second."""

from __future__ import annotations

import time

import numpy as np
import pytest

import circuitboard as cb
from tests.browser.test_attribution_views import canvas_pixels, cell_center
from tests.conftest import open_report

pytestmark = pytest.mark.real

NAMES = [("Mary", "John"), ("Alice", "Bob"), ("Sarah", "Tom"), ("Emma", "James"), ("Anna", "Mark")]
NAMES += [("Lucy", "Paul")]
TEMPLATE = "When {} and {} went to the store, {} gave a drink to"
FIRST = [TEMPLATE.format(a, b, b) for a, b in NAMES]  # the answer is the first name
SECOND = [TEMPLATE.format(a, b, a) for a, b in NAMES]  # the answer is the second name


def test_compare_ioi_consistent_with_direct_captures(default_model, page, tmp_path, artifacts):
    import torch

    model, tok = default_model
    t0 = time.perf_counter()
    cmp = cb.compare(model, tok, {"answer: 1st name": FIRST, "answer: 2nd name": SECOND})
    elapsed = time.perf_counter() - t0
    # 17-40 s measured on a shared 2-core CPU (the forward passes dominate); a loose bound
    assert elapsed < 120, f"compare of 12 prompts took {elapsed:.1f}s"
    assert cmp.n_heads == 9 and len(cmp.layers) == 30 and cmp.d_mlp == 1536
    assert cmp.count("answer: 1st name") == 6

    # Internal consistency: statistics equal those of a direct capture of each prompt.
    layers = [0, 14, 29]
    caps = cb.capture(
        model, tok, SECOND, layers=layers, what=("z", "pattern", "mlp_post"), dtype=torch.float32
    )
    st = cmp.stats["answer: 2nd name"]
    for row, layer in zip(layers, layers, strict=True):
        w = np.stack([c.per_head_writes(layer, pos=-1).norm(dim=-1).double().numpy() for c in caps])
        np.testing.assert_allclose(st["head_write"].mean[row], w.mean(0), rtol=1e-4)
        sd = w.std(0, ddof=1)
        np.testing.assert_allclose(st["head_write"].std()[row], sd, rtol=1e-3, atol=1e-5)
        pat = [c[f"blocks.{layer}.attn.hook_pattern"][:, -1, 0] for c in caps]
        p = np.stack([x.double().numpy() for x in pat])
        np.testing.assert_allclose(st["attn_first"].mean[row], p.mean(0), rtol=1e-4, atol=1e-6)
        n = np.stack([c[f"blocks.{layer}.mlp.hook_post"][-1].double().numpy() for c in caps])
        np.testing.assert_allclose(st["neurons"].mean[row], n.mean(0), rtol=1e-4, atol=1e-5)

    # Both categories end in the same tokens: the heads that differ most do so clearly, and
    # the per-layer sums are finite.
    e = cmp.effect("answer: 1st name", "answer: 2nd name", "head_write")
    assert np.isfinite(e.d).all() and np.abs(e.d).max() > 2
    top = cmp.top("answer: 1st name", "answer: 2nd name", "head_write", k=5)
    assert abs(top[0]["d"]) == pytest.approx(np.abs(e.d).max())

    link = cb.Link()
    view = cb.compare_view(cmp, link=link)
    attn = cb.attention(caps[0], link=link)
    path = cb.report(view, attn, path=tmp_path / "compare-ioi.html", title="compare IOI")
    open_report(page, path)
    px = canvas_pixels(page, ".cb-cmp-heat")
    assert px.shape[:2] == (30, 9) and px[..., :3].std() > 3
    li, h = top[0]["layer"], top[0]["head"]
    x, y = cell_center(page, ".cb-cmp-heat", li, h, 30, 9)
    page.mouse.move(x, y)
    page.wait_for_selector(f'.cb-cmp[data-hover="L{li}H{h}"]')
    page.mouse.click(x, y)
    page.wait_for_selector(f'.cb-cmp[data-layer="{li}"][data-head="{h}"]')
    page.screenshot(path=str(artifacts / "compare-ioi-default.png"), full_page=True)
    assert page.cb_errors == []
