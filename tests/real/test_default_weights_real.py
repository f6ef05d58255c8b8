"""The default model names its weights, so captures and report headers say Q4_1 (issue 24)."""

from __future__ import annotations

import pytest

from circuitboard.capture._provenance import provenance

pytestmark = pytest.mark.real


def test_a_capture_of_the_default_model_names_the_q4_1_weights(ioi_capture) -> None:
    assert "Q4_1 GGUF, de-quantized" in ioi_capture.info.model_name
    assert "Q4_1" in provenance(ioi_capture)["model"]
