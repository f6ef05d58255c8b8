"""Issue 24 item 9 on the default model: the greater-than task's answer is a set of digits;
its DLA (mean logit of the digits above the start minus the mean of those below) sums to the
model's value in float32."""

from __future__ import annotations

import torch

import circuitboard as cb

PROMPT = "The war lasted from the year 1732 to the year 17"


def test_greater_than_set_target_sums_exactly(default_model):
    model, tok = default_model
    cap = cb.capture(model, tok, PROMPT, dtype=torch.float32)
    above = [str(d) for d in range(4, 10)]  # the next digit: any decade after the 30s
    below = [str(d) for d in range(0, 3)]
    attr = cb.direct_logit_attribution(cap, above, baseline=below)
    ids = lambda ds: [tok.encode(d, add_special_tokens=False)[0] for d in ds]  # noqa: E731
    row = cap.logits[-1].double()
    want = float(row[ids(above)].mean() - row[ids(below)].mean())
    assert abs(attr.model_value - want) <= 1e-6 * abs(want)
    assert abs(attr.total - attr.model_value) <= 1e-5 * abs(attr.model_value)
