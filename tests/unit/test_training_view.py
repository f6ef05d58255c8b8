"""TrainingView's state comes from the run; bad choices name what the run has."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import circuitboard as cb
from circuitboard.training import TrainingRecorder
from circuitboard.widgets import decode

from .training_helpers import tiny_toy, toy_batch, train_toy


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model = tiny_toy()
    path = tmp_path_factory.mktemp("v") / "r.db"
    rec = TrainingRecorder(model, every=2, probes=toy_batch(9, 2)[0], probe_every=2, path=path)
    train_toy(model, 5, rec)
    return rec.close()


def test_state_holds_the_runs_numbers(run):
    view = cb.training_view(run, stat="std")
    kp = decode(view._kpis["grad"])
    j = view.names.index("blocks.1.hook_resid_post")
    want = run.values[:, :, run.index("grad:blocks.1.hook_resid_post")]
    np.testing.assert_allclose(kp[:, :, j], want, rtol=1e-6)
    np.testing.assert_allclose(decode(view._loss), run.loss, rtol=1e-6)
    scores = decode(view._scores)
    np.testing.assert_allclose(scores[0], run.head_scores["induction"], rtol=1e-6)
    pats = decode(view._patterns)
    np.testing.assert_allclose(pats, run.patterns[:, 0], atol=1e-4)
    assert view.steps == [0, 2, 4] and view.probe_steps == [0, 2, 4]
    view.pick(2, 1, 0)
    assert view.picked == {"p": 1, "layer": 1, "head": 0}
    assert view.selection["layer"] == 1 and view.selection["head"] == 0


def test_attention_view_of_a_probe_step_shares_the_link(run):
    view = cb.training_view(run)
    attn = view.attention_view(2)
    assert attn.link is view.link
    view.pick(4, 1, 1)
    assert attn.selection["layer"] == 1 and attn.selection["head"] == 1
    with pytest.raises(ValueError, match=r"step 1 is not a probe step"):
        view.attention_view(1)


def test_bad_choices(run):
    with pytest.raises(
        ValueError, match=r"category='nope' is not in this run; choose from \['all'\]"
    ):
        cb.training_view(run, category="nope")
    with pytest.raises(ValueError, match=r"stat='median'.*'norm'"):
        cb.training_view(run, stat="median")
    with pytest.raises(TypeError, match="TrainingView needs a TrainingRun"):
        cb.training_view(np.zeros(3))
    with pytest.raises(ValueError, match=r"step 3 is not a probe step; probe steps: \[0, 2, 4\]"):
        cb.training_view(run).pick(3, 0, 0)


def test_the_view_module_never_imports_torch():
    import subprocess

    code = "import sys, circuitboard.widgets._training; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_two_trials_share_one_step_axis_and_every_tensor(run, tmp_path):
    # another architecture (one layer) recorded on other steps
    from circuitboard.training import AttentionOnlyTransformer

    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    small = AttentionOnlyTransformer(n_layers=1, d_model=16, n_heads=2, vocab=12, n_ctx=16)
    rec = TrainingRecorder(small, every=3, path=tmp_path / "b.db", trial="one layer")
    train_toy(small, 5, rec)
    other = rec.close()
    view = cb.training_view(run, other)
    assert view.steps == [0, 2, 3, 4] and view._steps_b == view.steps
    a, b = decode(view._kpis["act"]), decode(view._kpis_b["act"])
    assert a.shape[0] == b.shape[0] == 4
    j = view.names.index("blocks.0.hook_resid_post")
    label = "act:blocks.0.hook_resid_post"
    # each trial's numbers at its own steps, NaN at the steps only the other recorded
    np.testing.assert_allclose(a[[0, 1, 3], :, j], run.values[:, :, run.index(label)], rtol=1e-6)
    np.testing.assert_allclose(b[[0, 2], :, j], other.values[:, :, other.index(label)], rtol=1e-6)
    assert np.isnan(a[2]).all() and np.isnan(b[[1, 3]]).all()
    loss_a, loss_b = decode(view._loss), decode(view._loss_b)
    assert np.isnan(loss_a[2]).all() and np.isnan(loss_b[1]).all()
    # the one-layer trial has no block 1: its rows are NaN (grey), not missing
    k = view.names.index("blocks.1.hook_resid_post")
    assert np.isnan(b[:, :, k]).all() and np.isfinite(a[[0, 1, 3], 0, k]).all()
    assert "blocks.1.hook_resid_post" in cb.training_view(other, run).names
    assert view.kind == "act" and cb.training_view(run, other, kind="param").kind == "param"


def test_a_picked_step_moves_the_linked_attention_view_to_that_step(run):
    view = cb.training_view(run)
    attn = view.attention_view(0)
    assert attn.link is view.link and attn._revision == 0
    np.testing.assert_allclose(attn.pattern(1, 0), run.patterns[0, 0, 1, 0] / 255, atol=1e-6)
    view.pick(4, 1, 1)  # as a click on the (step 4, L1H1) cell
    p = view.probe_steps.index(4)
    assert attn._revision == 1
    np.testing.assert_allclose(attn.pattern(1, 1), run.patterns[p, 0, 1, 1] / 255, atol=1e-6)
    assert attn._initial["layer"] == 1 and attn._initial["head"] == 1
    # the first paint's pattern is that head at that step, as the browser decodes it
    got = decode(attn._initial["pattern"])
    np.testing.assert_allclose(got, run.patterns[p, 0, 1, 1] / 255, atol=1 / 255)
    assert attn.selection["layer"] == 1 and attn.selection["head"] == 1
    # follow=False keeps the step it was built at
    still = view.attention_view(0, follow=False)
    view.pick(2, 0, 0)
    assert still._revision == 0 and attn._revision == 2


def test_set_attention_checks_the_shape():
    att = np.tril(np.ones((1, 2, 3, 3)))
    att /= att.sum(-1, keepdims=True)
    view = cb.AttentionView(att, ["a", "b", "c"], scores={"mine": np.ones((1, 2))})
    with pytest.raises(ValueError, match=r"same shape \[1, 2, 3, 3\].*got \[1, 2, 4, 4\]"):
        view.set_attention(np.ones((1, 2, 4, 4)) / 4)
    view.set_attention(np.tril(np.ones((1, 2, 3, 3))) / 3)
    assert "mine" in view.scores and "entropy" in view.scores


def _report_frames(text: str) -> tuple[dict, dict[int, dict]]:
    """The attention view's state and its embedded ``fetch-frame`` replies (frame → fields
    with their tensors decoded) of a written report."""
    import base64
    import gzip
    import json
    import re

    def script(sid: str) -> str:
        return re.search(rf'<script id="{sid}" type="[^"]+">(.*?)</script>', text, re.S).group(1)

    data = json.loads(script("cb-state"))
    blob = gzip.decompress(base64.b64decode(script("cb-blob")))

    def resolve(v):
        if isinstance(v, dict):
            if set(v) == {"$blob"}:
                a, n = v["$blob"]
                return blob[a : a + n]
            return {k: resolve(x) for k, x in v.items()}
        return [resolve(x) for x in v] if isinstance(v, list) else v

    (mid,) = [k for k, m in data["models"].items() if m["state"].get("_view") == "attention"]
    frames = {}
    for key, reply in data["replies"][mid].items():
        req = json.loads(key)
        if req["kind"] != "fetch-frame":
            continue
        bufs = [resolve({"$blob": b}) for b in reply["buffers"]]
        fields = resolve(reply["fields"])
        for name, v in fields.items():
            if isinstance(v, dict) and "shape" in v:
                fields[name] = decode({**v, "data": bufs[v["data"]]})
        frames[req["frame"]] = fields
    return resolve(data["models"][mid]["state"]), frames


def test_a_report_embeds_the_probe_steps_for_the_linked_attention_view(run):
    view = cb.training_view(run)
    attn = view.attention_view(0)
    assert attn._follow["steps"] == view.probe_steps and attn._frame == 0
    assert attn._follow["model"] == f"IPY_MODEL_{view.model_id}"
    text = cb.export.build_report([view, attn], title="t")
    state, frames = _report_frames(text)
    assert state["_follow"]["steps"] == [0, 2, 4]
    assert sorted(frames) == [0, 1, 2]  # every probe step fits: none thinned
    assert "probe steps in this report" not in text
    for p, fields in frames.items():
        # short prompt: the thumbnails are the heads, the run's uint8 codes / 255
        np.testing.assert_allclose(fields["_thumbs"], run.patterns[p, 0] / 255, atol=0.5 / 255)
        assert "_heads" not in fields
        want = cb.AttentionView(run.patterns[p, 0] / 255, list(view.probe_tokens)).scores
        np.testing.assert_allclose(fields["scores"]["entropy"], want["entropy"], atol=1e-6)
    # follow=False embeds no frames
    fixed = view.attention_view(0, follow=False)
    assert _report_frames(cb.export.build_report([view, fixed], title="t"))[1] == {}


def test_frames_of_a_long_probe_carry_every_head_and_thin_to_the_budget():
    # 40 tokens: thumbnails are pooled, so each frame also carries every head (causal: the
    # lower triangles). Ten frames, a budget with room for three: one in every four kept.
    rng = np.random.default_rng(0)
    T, steps = 40, list(range(0, 100, 10))
    pats = np.tril(rng.random((len(steps), 2, 2, T, T)))
    pats /= pats.sum(-1, keepdims=True)
    tokens = [f"t{i}" for i in range(T)]
    attn = cb.AttentionView(pats[0], tokens)
    other = cb.AttentionView(pats[0], tokens)  # stands in for the view whose trait picks
    attn.follow_frames(other, lambda i: pats[i], steps, trait="picked", key="p", frame=0)
    one = attn._frame_bytes()
    assert one == 2 * 2 * 32 * 32 + 2 * 2 * T * (T + 1) // 2
    assert attn.frames_plan(10**9) == list(range(10))
    budget = int(3.5 * one / 0.5)
    assert attn.frames_plan(budget) == [0, 4, 8, 9]  # one in every 4, and the last
    notes = attn.frames_notes(budget)
    assert notes and "4 of 10 probe steps" in notes[0] and "one in every 4" in notes[0]
    fields = attn.answer({"kind": "fetch-frame", "frame": 8})[0]
    assert fields["frame"] == 8 and fields["_heads"]["tril"] is True
    with pytest.raises(IndexError, match="frame"):
        attn.answer({"kind": "fetch-frame", "frame": 10})
    text = cb.export.build_report([attn], title="t", budget_bytes=400_000)
    _, frames = _report_frames(text)
    assert 0 < len(frames) < 10 and "probe steps in this report" in text
    for p, f in frames.items():
        np.testing.assert_allclose(f["_heads"], pats[p], atol=0.5 / 255 + 1e-7)
    with pytest.raises(ValueError, match="no frames"):
        cb.AttentionView(pats[0], tokens).answer({"kind": "fetch-frame", "frame": 0})
