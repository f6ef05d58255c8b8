"""TrainingRecorder: KPIs equal brute force, gradients equal autograd, training unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuitboard.training import STATS, TrainingRecorder, load_training_run
from circuitboard.training._stats import brute_force

from .training_helpers import TokenMLP, hook_count, tiny_toy, token_loss, toy_batch, train_toy


def _one_step(model, rec, ids, keep: dict):
    """One recorded step; ``keep`` receives the tensors (and their gradients) by module name."""
    handles = []
    for name in ("up", "act", "down"):
        mod = dict(model.named_modules())[name]

        def hook(m, a, out, name=name):
            out.retain_grad()
            keep[name] = out

        handles.append(mod.register_forward_hook(hook))
    try:
        with rec.step(0):
            per = token_loss(model(ids), ids)
            rec.loss(per)
            per.mean().backward()
    finally:
        for h in handles:
            h.remove()


def test_kpis_equal_brute_force_and_grads_equal_autograd(tmp_path):
    torch.manual_seed(0)
    model = TokenMLP()
    ids = torch.randint(0, 16, (4, 6))
    first = torch.arange(6)[None, :].expand(4, 6) < 3
    rec = TrainingRecorder(
        model,
        modules=["up", "act", "down"],
        every=1,
        samples=[1],
        categories=lambda b: {"first": first, "second": ~first},
        path=tmp_path / "r.sqlite",
    )
    keep: dict = {}
    _one_step(model, rec, ids, keep)
    run = rec.close()
    assert run.categories == ["all", "first", "second"]
    for name, t in keep.items():
        for cat, mask in (("all", None), ("first", first), ("second", ~first)):
            x = t.detach() if mask is None else t.detach()[mask]
            g = t.grad if mask is None else t.grad[mask]
            np.testing.assert_allclose(run.series(f"act:{name}", "norm", cat), brute_force(x)[5])
            got = run.values[0, run.category(cat), run.index(f"act:{name}")]
            np.testing.assert_allclose(got, brute_force(x), rtol=1e-6, atol=1e-12)
            got = run.values[0, run.category(cat), run.index(f"grad:{name}")]
            np.testing.assert_allclose(got, brute_force(g), rtol=1e-6, atol=1e-9)
        # per-sample values of the kept row 1
        got = run.sample_values[0, 0, run.category("first"), run.index(f"act:{name}")]
        np.testing.assert_allclose(got, brute_force(t.detach()[1, :3]), rtol=1e-6)
    for name, p in model.named_parameters():
        i = run.category("all")
        np.testing.assert_allclose(
            run.values[0, i, run.index(f"param_grad:{name}")],
            brute_force(p.grad),
            rtol=1e-6,
            atol=1e-9,
        )
    # per-token losses split by category; "all" is the mean over every token
    per = token_loss(model(ids), ids).detach().double()
    np.testing.assert_allclose(run.loss_of("first")[0], per[first].mean().item(), rtol=1e-6)
    np.testing.assert_allclose(run.loss_of("all")[0], per.mean().item(), rtol=1e-6)
    np.testing.assert_allclose(
        run.sample_loss[0, 0, run.category("second")], per[1, 3:].mean().item(), rtol=1e-6
    )
    assert STATS == run.stats


def test_param_values_recorded_before_the_update(tmp_path):
    model = tiny_toy()
    w0 = model.unembed.weight.detach().clone()
    rec = TrainingRecorder(model, modules=[], every=1, path=tmp_path / "r.sqlite")
    train_toy(model, 1, rec)
    run = rec.close()
    np.testing.assert_allclose(run.series("param:unembed.weight", "mean"), [brute_force(w0)[0]])


def test_recording_never_changes_training(tmp_path):
    a = tiny_toy()
    torch.manual_seed(5)
    train_toy(a, 12)
    plain_rng = torch.random.get_rng_state()
    b = tiny_toy()
    probes, _ = toy_batch(999, 2)
    rec = TrainingRecorder(b, every=3, probes=probes, probe_every=6, path=tmp_path / "r.sqlite")
    torch.manual_seed(5)
    train_toy(b, 12, rec)
    assert torch.equal(plain_rng, torch.random.get_rng_state())  # no random numbers drawn
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    run = rec.close()
    assert run.steps.tolist() == [0, 3, 6, 9]
    assert run.probe_steps.tolist() == [0, 6]
    assert run.head_scores["induction"].shape == (2, 2, 2)


def test_categories_by_batch(tmp_path):
    model = tiny_toy()
    rec = TrainingRecorder(
        model, every=1, modules=["blocks.0.hook_resid_post"], params=[], path=tmp_path / "r.sqlite"
    )
    for step in range(4):
        ids, _ = toy_batch(step)
        with rec.step(step, category="even" if step % 2 == 0 else "odd"):
            rec.loss(token_loss(model(ids), ids).mean())
            token_loss(model(ids), ids).mean().backward()
    run = rec.close()
    assert run.categories == ["all", "even", "odd"]
    even, odd = run.loss_of("even"), run.loss_of("odd")
    assert np.isnan(even[1::2]).all() and np.isnan(odd[0::2]).all()
    assert not np.isnan(even[0::2]).any() and not np.isnan(odd[1::2]).any()
    np.testing.assert_array_equal(run.loss_of("all")[0::2], even[0::2])
    # activations run twice per step (two forwards): KPIs merge both passes exactly
    s = run.series("act:blocks.0.hook_resid_post", "mean", "even")
    assert not np.isnan(s[0])


def test_token_categories_with_labels_array(tmp_path):
    model = tiny_toy()
    rec = TrainingRecorder(
        model,
        every=1,
        params=[],
        grads=False,
        path=tmp_path / "r.sqlite",
        modules=["blocks.1.hook_resid_post"],
        categories=lambda ids: np.where(np.arange(16) < 8, "a", "b")[None].repeat(ids.shape[0], 0),
    )
    ids, _ = toy_batch(0)
    out = {}
    h = model.blocks[1].hook_resid_post.register_forward_hook(lambda m, a, o: out.update(x=o))
    with torch.no_grad(), rec.step(0):
        model(ids)
    h.remove()
    run = rec.close()
    assert run.categories == ["all", "a", "b"]
    np.testing.assert_allclose(
        run.values[0, run.category("b"), 0], brute_force(out["x"][:, 8:]), rtol=1e-6
    )


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_no_hooks_left_after_close_exception_and_interrupt(tmp_path, exc):
    model = tiny_toy()
    rec = TrainingRecorder(model, every=1, path=tmp_path / "r.sqlite")
    # fail inside the forward, while the recorder's hooks are installed
    boom = model.blocks[1].register_forward_hook(lambda *a: (_ for _ in ()).throw(exc("x")))
    with pytest.raises(exc):
        train_toy(model, 2, rec)
    boom.remove()
    assert hook_count(model) == 0 and rec.hook_count() == 0
    train_toy(model, 2, rec, start=1)
    assert hook_count(model) == 0
    run = rec.close()
    assert hook_count(model) == 0
    assert run.steps.tolist() == [1, 2]  # step 0 raised: not written


def test_interrupted_run_loads_and_resumes(tmp_path):
    path = tmp_path / "run.sqlite"
    model = tiny_toy()
    rec = TrainingRecorder(model, every=5, path=path, trial="a")
    with pytest.raises(KeyboardInterrupt):
        train_toy(model, 30, rec, raise_at=17, exc=KeyboardInterrupt)
    # no close(): the file holds every finished step
    crashed = load_training_run(path)
    assert crashed.steps.tolist() == [0, 5, 10, 15]
    rec2 = TrainingRecorder(model, every=5, path=path, trial="a")
    train_toy(model, 10, rec2, start=15)
    run = rec2.close()
    assert run.steps.tolist() == [0, 5, 10, 15, 20]
    np.testing.assert_array_equal(run.values[:3], crashed.values[:3])


def test_trials_side_by_side_and_save(tmp_path):
    from circuitboard.training import trials

    path = tmp_path / "run.sqlite"
    for name, seed in (("narrow", 0), ("other-seed", 1)):
        rec = TrainingRecorder(tiny_toy(seed), every=2, path=path, trial=name)
        train_toy(rec.model, 4, rec)
        rec.close()
    assert trials(path) == ["narrow", "other-seed"]
    with pytest.raises(ValueError, match="holds 2 trials"):
        load_training_run(path)
    a = load_training_run(path, trial="narrow")
    a.save(tmp_path / "copy.sqlite")
    b = load_training_run(tmp_path / "copy.sqlite")
    np.testing.assert_array_equal(a.values, b.values)
    assert "TrainingRun(trial='narrow', 2 recorded steps" in repr(b)


def test_attached_recorder_needs_no_call_and_equals_step_mode(tmp_path):
    a, b, c = tiny_toy(), tiny_toy(), tiny_toy()
    probes, _ = toy_batch(999, 2)
    rec_a = TrainingRecorder(a, every=3, probes=probes, path=tmp_path / "a.db")
    train_toy(a, 8, rec_a)
    rec_b = TrainingRecorder(b, every=3, probes=probes, path=tmp_path / "b.db")
    opt = torch.optim.AdamW(b.parameters(), lr=1e-2)
    rec_b.attach(opt)
    for step in range(8):  # the loop knows nothing of the recorder except rec.loss
        ids, _ = toy_batch(step)
        per = token_loss(b(ids), ids)
        rec_b.loss(per)
        per.mean().backward()
        opt.step()
        opt.zero_grad()
    assert rec_b.hook_count() == 3  # forward, before and after the update
    run_a, run_b = rec_a.close(), rec_b.close()
    assert hook_count(b) == 0 and rec_b.hook_count() == 0
    assert run_b.steps.tolist() == [0, 3, 6]
    np.testing.assert_array_equal(run_a.values, run_b.values)
    np.testing.assert_array_equal(run_a.loss, run_b.loss)
    np.testing.assert_array_equal(run_a.head_scores["induction"], run_b.head_scores["induction"])
    train_toy(c, 8)
    for p, q in zip(c.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q)
