"""Checkpoint runs, correlations and bad input of the training recorder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuitboard.training import (
    TrainingRecorder,
    correlate,
    from_checkpoints,
    load_kpi_correlation,
)

from .training_helpers import TokenMLP, tiny_toy, token_loss, toy_batch


def test_from_checkpoints_equals_what_the_recorder_saw(tmp_path):
    model = tiny_toy()
    probes, _ = toy_batch(999, 2)
    fixed, _ = toy_batch(7)
    rec = TrainingRecorder(model, every=3, probes=probes, probe_every=3, path=tmp_path / "r.db")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    saved, steps = [], []
    for step in range(7):
        if rec.records(step):  # the weights this step starts from
            saved.append({k: v.clone() for k, v in model.state_dict().items()})
            steps.append(step)
        with rec.step(step, batch=fixed):
            per = token_loss(model(fixed), fixed)  # the same batch every step
            rec.loss(per)
            per.mean().backward()
        opt.step()
        opt.zero_grad()
    seen = rec.close()
    torch.save(saved[1], tmp_path / "step3.pt")
    ckpts = [saved[0], tmp_path / "step3.pt", saved[2]]
    run = from_checkpoints(
        ckpts,
        model=tiny_toy(5),
        steps=steps,
        probes=probes,
        batch=fixed,
        loss_fn=lambda out, ids: token_loss(out, ids),
        path=tmp_path / "c.db",
    )
    assert run.steps.tolist() == seen.steps.tolist() == [0, 3, 6]
    assert run.labels == seen.labels
    np.testing.assert_allclose(run.values, seen.values, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(run.loss, seen.loss, rtol=1e-6)
    for k, v in seen.head_scores.items():
        np.testing.assert_array_equal(run.head_scores[k], v)
    np.testing.assert_array_equal(run.patterns, seen.patterns)
    assert run.meta["source"] == "checkpoints"


def test_correlate_finds_a_planted_lagged_relation(tmp_path):
    """A module whose norm is set to track the loss two recorded steps ahead."""
    rng = np.random.default_rng(0)
    target = np.cumsum(rng.normal(size=40)) + 10.0

    class Planted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.tracker = torch.nn.Identity()
            self.noise = torch.nn.Identity()
            self.scale = 1.0

        def forward(self, x):
            h = self.lin(x)
            self.tracker(torch.ones(3) * self.scale)
            self.noise(torch.randn(3))
            return h

    model = Planted()
    rec = TrainingRecorder(model, every=1, grads=False, params=[], path=tmp_path / "r.db")
    for step in range(40):
        model.scale = float(target[min(step + 2, 39)])  # the norm leads the loss by 2 steps
        with torch.no_grad(), rec.step(step):
            model(torch.randn(2, 4))
            rec.loss(float(target[step]))
    run = rec.close()
    corr = run.correlate("loss", max_lag=4, stats=("norm", "mean_abs"))
    best = corr.top(2)
    assert {b["label"] for b in best} == {"act:tracker/norm", "act:tracker/mean_abs"}
    assert best[0]["lag"] == 2 and best[0]["r"] > 0.999
    noise = corr.values[corr.labels.index("act:noise/norm")]
    assert abs(noise) < 0.6
    corr.save(tmp_path / "c.npz")
    again = load_kpi_correlation(tmp_path / "c.npz")
    np.testing.assert_array_equal(again.values, corr.values)
    assert again.labels == corr.labels
    assert "lag=2" in repr(corr)
    # a KPI as the target: the tracker's other KPIs move with its norm at lag 0
    other = correlate(run, "act:tracker/norm", max_lag=2).top(1)[0]
    assert other["label"].startswith("act:tracker/") and other["lag"] == 0 and other["r"] > 0.999


def test_correlate_across_samples(tmp_path):
    torch.manual_seed(0)
    model = TokenMLP()
    rec = TrainingRecorder(
        model, modules=["up"], params=[], every=1, samples=[0, 1, 2, 3], path=tmp_path / "r.db"
    )
    for step in range(6):
        ids = torch.randint(0, 16, (4, 5))
        with rec.step(step):
            out = model.up(model.embed(ids))
            per = out.pow(2).mean((1, 2))  # per-sample loss = mean square of the activation
            rec.loss(per)
            per.sum().backward()
    run = rec.close()
    corr = run.correlate("loss", by="samples", stats=("std", "norm"))
    # the gradient of the loss is 2 * out / numel per sample, so its norm ties with the
    # activation's norm exactly (up to float rounding): both lead, in either order
    top = corr.top(2)
    assert {t["label"] for t in top} == {"act:up/norm", "grad:up/norm"}
    assert all(t["r"] > 0.99 and t["n"] == 24 for t in top)


def test_bad_module_name_lists_close_ones():
    with pytest.raises(
        ValueError,
        match=r"module 'blocks\.0\.hook_atn_out'.*Close names: "
        r"\['blocks\.0\.hook_attn_out'",
    ):
        TrainingRecorder(tiny_toy(), modules=["blocks.0.hook_atn_out"])
    with pytest.raises(ValueError, match="parameter 'unembed.wieght'.*unembed.weight"):
        TrainingRecorder(tiny_toy(), params=["unembed.wieght"])


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda ids: "first", r"returned str; expected a dict \{name: bool mask\}"),
        (lambda ids: {"a": ids.float()}, r"mask 'a' of dtype torch.float32.*bool masks"),
        (lambda ids: {"a": torch.ones(3, dtype=torch.bool)}, r"mask 'a'.*shape \(3,\)"),
        (lambda ids: np.ones(ids.shape, dtype=float), "labels of dtype float64"),
        (lambda ids: {"all": ids > 0}, "reserved for the whole batch"),
    ],
)
def test_unusable_category_function(tmp_path, fn, match):
    model = tiny_toy()
    rec = TrainingRecorder(model, every=1, categories=fn, path=tmp_path / "r.db")
    ids, _ = toy_batch(0)
    with pytest.raises(ValueError, match=match), rec.step(0):
        model(ids).sum().backward()
    assert rec.hook_count() == 0


def test_gradients_asked_for_on_an_eval_model_without_grads(tmp_path):
    model = tiny_toy()
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    rec = TrainingRecorder(model, every=1, params=[], path=tmp_path / "r.db")
    ids, _ = toy_batch(0)
    with pytest.raises(RuntimeError, match=r"runs in eval\(\) mode.*model.train\(\).*grads=False"):
        with rec.step(0):
            model(ids)
    with pytest.raises(RuntimeError, match=r"gradients are disabled.*grads=False"):
        with torch.no_grad(), rec.step(0):
            model(ids)
    trained = tiny_toy()
    rec = TrainingRecorder(trained, every=1, path=tmp_path / "s.db")
    with pytest.raises(RuntimeError, match=r"no gradient reached.*loss.backward\(\)"):
        with rec.step(0):
            trained(ids)


def test_other_bad_input(tmp_path):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        TrainingRecorder("gpt2")
    with pytest.raises(ValueError, match="every must be a positive int"):
        TrainingRecorder(tiny_toy(), every=0)
    with pytest.raises(ValueError, match=r"unknown stats \['median'\]"):
        TrainingRecorder(tiny_toy(), stats=["median"])
    with pytest.raises(ValueError, match="probe_every=5 must be a multiple of every=2"):
        TrainingRecorder(tiny_toy(), every=2, probes=toy_batch(0)[0], probe_every=5)
    with pytest.raises(ValueError, match="probes need attention patterns"):
        TrainingRecorder(TokenMLP(), probes=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="need model=..."):
        from_checkpoints([{}])
    with pytest.raises(ValueError, match="2 checkpoints but 1 steps"):
        from_checkpoints([{}, {}], model=tiny_toy(), steps=[0])


def test_losses_by_category_skip_nan_and_add_over_micro_batches(tmp_path):
    model = TokenMLP()
    g = torch.Generator().manual_seed(3)
    first = torch.zeros(4, 5, dtype=torch.bool)
    first[:, :2] = True
    rec = TrainingRecorder(
        model,
        every=1,
        modules=[],
        params=[],
        grads=False,
        samples=[0, 2],
        categories=lambda ids: {"first": first, "odd rows": torch.arange(4) % 2 == 1},
        path=tmp_path / "l.db",
    )
    a, b = torch.rand(4, 5, generator=g), torch.rand(4, 5, generator=g)
    a[0, 0] = b[2, 4] = float("nan")  # positions without a loss
    with rec.step(0):
        for part in (a, b):  # two micro-batches: the losses of their union
            model(torch.zeros(4, 5, dtype=torch.long))
            rec.loss(part)
    run = rec.close()
    both = torch.stack([a, b]).double()

    def mean(m):
        x = both[:, m] if m is not None else both
        return x[~torch.isnan(x)].mean().item()

    np.testing.assert_allclose(run.loss_of("all")[0], mean(None), rtol=1e-12)
    np.testing.assert_allclose(run.loss_of("first")[0], mean(first), rtol=1e-12)
    rows = torch.zeros(4, 5, dtype=torch.bool)
    rows[1::2] = True
    np.testing.assert_allclose(run.loss_of("odd rows")[0], mean(rows), rtol=1e-12)
    row2 = torch.zeros(4, 5, dtype=torch.bool)
    row2[2] = True
    np.testing.assert_allclose(run.sample_loss[0, 1, run.category("all")], mean(row2), rtol=1e-12)
    np.testing.assert_allclose(
        run.sample_loss[0, 1, run.category("first")], mean(row2 & first), rtol=1e-12
    )
    # row 2 is not an odd row: no loss there for that category
    assert np.isnan(run.sample_loss[0, 1, run.category("odd rows")])
