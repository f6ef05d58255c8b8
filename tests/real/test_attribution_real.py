"""The default model (SmolLM2-135M): exact IOI attribution, logit lens, induction heads."""

from __future__ import annotations

import pytest
import torch

from circuitboard.analysis import direct_logit_attribution, head_scores, logit_lens
from tests.conftest import IOI_PROMPT

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def ioi32(default_model):
    """The IOI prompt captured in float32 (exactness needs float32 activations)."""
    from circuitboard.capture import capture

    model, tok = default_model
    return capture(model, tok, IOI_PROMPT, dtype=torch.float32)


def test_ioi_logit_difference_is_reproduced(ioi32):
    attr = direct_logit_attribution(ioi32, " Mary", baseline=" John")
    row = ioi32.logits[-1].double()
    tok = ioi32.tokenizer
    mary, john = (tok.encode(w, add_special_tokens=False)[0] for w in (" Mary", " John"))
    expected = float(row[mary] - row[john])
    assert expected > 1.0, "the model should prefer the indirect object ' Mary'"
    assert attr.model_value == pytest.approx(expected, abs=1e-6)
    assert abs(attr.total - expected) <= 1e-4 * abs(expected)
    assert attr.residual_error < 1e-5
    # 30 layers x 9 heads + 30 MLPs + embed + bias.
    assert len(attr.labels) == 30 * 9 + 30 + 2
    assert attr.heads.shape == (30, 9)
    for layer in (0, 15, 29):
        assert float(attr.neurons(layer).double().sum()) == pytest.approx(
            attr[f"L{layer}.mlp"], abs=1e-4
        )
    # Late heads carry the answer: the largest single head pushes towards Mary.
    label, value = attr.top(1)[0]
    assert value > 1.0 and label.startswith("L")


def test_single_logit_is_exact(ioi32):
    attr = direct_logit_attribution(ioi32, " Mary", pos=5)
    expected = float(ioi32.logits[5, attr.target])
    assert abs(attr.total - expected) <= 1e-4 * max(abs(expected), 1.0)


def test_float16_capture_is_close(default_model):
    from circuitboard.capture import capture

    model, tok = default_model
    cap = capture(model, tok, IOI_PROMPT, dtype=torch.float16)
    attr = direct_logit_attribution(cap, " Mary", baseline=" John")
    assert abs(attr.total - attr.model_value) <= 1e-2 * abs(attr.model_value)


def test_lens_last_layer_equals_logits(ioi32):
    lens = logit_lens(ioi32)
    torch.testing.assert_close(lens.logits(29), ioi32.logits.float(), rtol=1e-4, atol=1e-4)
    assert lens.top_tokens[-1][-1][0] == " Mary"
    # The answer emerges late: absent from the early layers' top-5 at the last position.
    assert " Mary" not in lens.top_tokens[0][-1]


def test_head_scores_find_induction_heads(default_model):
    model, tok = default_model
    scores = head_scores(model, tok)
    assert scores["induction"].shape == (30, 9)
    top = float(scores["induction"].max())
    assert top > 0.8, f"expected an induction head scoring near 0.9; best is {top:.3f}"
    assert float(scores["previous_token"].max()) > 0.8
    # Induction heads sit after previous-token heads.
    li = int(scores["induction"].argmax()) // 9
    lp = int(scores["previous_token"].argmax()) // 9
    assert li > 0 and lp < 29
