"""The recorder's fast paths record exactly what the plain computation would: sums merged once
per step, one gradient tensor shared by two sites, NULL for stats not kept, checkpoints on a
thread of their own, one torch thread for small reductions."""

from __future__ import annotations

import shutil
import sqlite3
import threading

import numpy as np
import pytest
import torch
from torch import nn

from circuitboard.training import TrainingRecorder, _stats, _store, load_training_run
from circuitboard.training._stats import STATS, brute_force
from circuitboard.training._stats import _row_reductions as row_reductions

from .training_helpers import TokenMLP, tiny_toy, token_loss, toy_batch, train_toy


def test_module_called_twice_in_a_step_records_the_union(tmp_path):
    """Two micro-batches in one step: each KPI, per category and kept row, is that of both."""
    torch.manual_seed(0)
    model = TokenMLP()
    first = torch.arange(6)[None, :].expand(4, 6) < 2
    rec = TrainingRecorder(
        model,
        modules=["up"],
        every=1,
        samples=[2],
        categories=lambda b: {"first": first, "rest": ~first},
        path=tmp_path / "r.sqlite",
    )
    outs, grads = [], []
    h = model.up.register_forward_hook(lambda m, a, out: outs.append(out))
    with rec.step(0):
        for seed in (1, 2):
            ids = torch.randint(0, 16, (4, 6), generator=torch.Generator().manual_seed(seed))
            per = token_loss(model(ids), ids)
            outs[-1].register_hook(grads.append)
            per.mean().backward()
    h.remove()
    run = rec.close()
    acts = [o.detach() for o in outs]
    grads = grads[::-1]  # hooks fire in backward order: the second call's first
    for cat, mask in (("all", torch.ones(4, 6, dtype=torch.bool)), ("first", first)):
        for kind, ts in (("act", acts), ("grad", grads)):
            want = brute_force(torch.cat([t[mask] for t in ts]))
            got = run.values[0, run.category(cat), run.index(f"{kind}:up")]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
            want = brute_force(torch.cat([t[2][mask[2]] for t in ts]))
            got = run.sample_values[0, 0, run.category(cat), run.index(f"{kind}:up")]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_one_gradient_tensor_at_two_sites_and_an_in_place_change(tmp_path, monkeypatch):
    """A residual add gives a block's output and its attention output one gradient tensor
    (its sums are reused); a tensor changed in place between two sites is summed again."""
    model = tiny_toy()
    names = ("blocks.1.hook_attn_out", "blocks.1.hook_resid_post")
    keep = {}

    def hook(m, a, out, name):
        out.retain_grad()
        keep[name] = out

    reduced = []  # every tensor the recorder reduces

    def spy(d, scratch=None):
        reduced.append(d)
        return row_reductions(d, scratch)

    monkeypatch.setattr(_stats, "_row_reductions", spy)
    mods = dict(model.named_modules())
    hs = [mods[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in names]
    rec = TrainingRecorder(model, modules=list(names), every=1, path=tmp_path / "r.sqlite")
    train_toy(model, 1, rec)
    for h in hs:
        h.remove()
    run = rec.close()
    assert len(reduced) == 3  # two activations, one gradient tensor for both sites
    for n in names:
        got = run.values[0, 0, run.index(f"grad:{n}")]
        np.testing.assert_allclose(got, brute_force(keep[n].grad), rtol=1e-6, atol=1e-9)

    class Doubling(nn.Module):
        def forward(self, x):
            return x.mul_(2)  # the same tensor object, changed

    net = nn.Sequential(nn.Linear(3, 4), nn.Identity(), Doubling())
    x = torch.randn(5, 3)
    rec = TrainingRecorder(net, modules=["1", "2"], grads=False, every=1, path=tmp_path / "i.db")
    with torch.no_grad(), rec.step(0):
        out = net(x)
    run = rec.close()
    np.testing.assert_allclose(run.series("act:1", "mean"), [out.mean().item() / 2], rtol=1e-6)
    np.testing.assert_allclose(run.series("act:2", "mean"), [out.mean().item()], rtol=1e-6)


def test_stats_not_kept_are_stored_as_nan(tmp_path):
    path = tmp_path / "r.sqlite"
    rec = TrainingRecorder(tiny_toy(), stats=["norm", "mean"], every=1, path=path)
    train_toy(rec.model, 2, rec)
    run = rec.close()
    assert run.stats == ("norm", "mean") and not np.isnan(run.values).any()
    store = _store.Store(path, readonly=True)
    kpi, samples = store.kpi_rows("run")
    store.close()
    values = np.array([r[4:] for r in kpi] + [r[5:] for r in samples])
    kept = [s in ("norm", "mean") for s in STATS]
    assert len(values) and not np.isnan(values[:, kept]).any()
    assert np.isnan(values[:, np.logical_not(kept)]).all()


def test_format_1_files_load_and_save(tmp_path):
    """A file that keeps a row per KPI (format 1) loads as the same run, and save() copies it."""
    path = tmp_path / "r.sqlite"
    rec = TrainingRecorder(tiny_toy(), every=1, path=path)
    train_toy(rec.model, 2, rec)
    run = rec.close()
    store = _store.Store(path, readonly=True)
    kpi, samples = store.kpi_rows("run")
    store.close()
    old = tmp_path / "old.sqlite"
    shutil.copy(path, old)
    db = sqlite3.connect(old)
    cols = ", ".join(f"{s} REAL" for s in STATS)
    with db:
        db.execute("DROP TABLE kpi_step")
        db.execute("DROP TABLE kpi_key")
        db.execute(f"CREATE TABLE kpi (trial, step, category, tensor, kind, {cols})")
        db.execute(f"CREATE TABLE sample_kpi (trial, step, sample, category, tensor, kind, {cols})")
        db.executemany(f"INSERT INTO kpi VALUES (?{', ?' * 10})", [("run", *r) for r in kpi])
        db.executemany(
            f"INSERT INTO sample_kpi VALUES (?{', ?' * 11})", [("run", *r) for r in samples]
        )
    db.close()
    for got in (load_training_run(old), None):
        if got is None:
            load_training_run(old).save(tmp_path / "copy.sqlite")
            got = load_training_run(tmp_path / "copy.sqlite")
        assert got.labels == run.labels and got.categories == run.categories
        np.testing.assert_array_equal(got.values, run.values)
        np.testing.assert_array_equal(got.sample_values, run.sample_values)


def test_checkpoints_run_beside_the_steps_and_lose_nothing(tmp_path, monkeypatch):
    """With a tiny checkpoint threshold every few commits wake the checkpoint thread; a run
    left unclosed still loads whole, and close() leaves no thread and an empty log."""
    monkeypatch.setattr(_store, "CHECKPOINT_BYTES", 1)
    path = tmp_path / "run.sqlite"
    model = tiny_toy()
    rec = TrainingRecorder(model, every=1, path=path)
    train_toy(model, 12, rec)
    rec.flush()  # steps reach the file from the writer thread
    assert rec.store._every == 1 and rec.store._checkpointer is not None
    crashed = load_training_run(path)  # while the recorder is still open
    assert crashed.steps.tolist() == list(range(12))
    run = rec.close()
    assert run.steps.tolist() == list(range(12))
    np.testing.assert_array_equal(run.values, crashed.values)
    assert not any(t.name == "circuitboard-checkpoint" for t in threading.enumerate())
    wal = tmp_path / "run.sqlite-wal"  # a reader may leave an empty one
    assert not wal.exists() or wal.stat().st_size == 0


def test_small_reductions_on_one_thread_restore_the_thread_count(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = tiny_toy()
        rec = TrainingRecorder(model, every=1, path=tmp_path / "r.sqlite")
        train_toy(model, 2, rec)
        assert torch.get_num_threads() == 2
        rec.close()
    finally:
        torch.set_num_threads(before)


def test_a_failed_background_write_is_raised_and_the_steps_before_it_kept(tmp_path, monkeypatch):
    """The writer thread's error reaches the training loop at the next step (naming what
    failed), and the steps written before it stay in the file."""
    path = tmp_path / "r.sqlite"
    model = tiny_toy()
    rec = TrainingRecorder(model, every=1, path=path)
    train_toy(model, 2, rec)
    rec.flush()

    def full_disk(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(rec.store, "write_step", full_disk)
    train_toy(model, 1, rec, start=2)  # its write fails on the writer thread
    with pytest.raises(RuntimeError, match="writing a recorded step failed.*disk is full"):
        train_toy(model, 1, rec, start=3)
    monkeypatch.undo()
    run = rec.close()
    assert run.steps.tolist() == [0, 1]
    assert rec.hook_count() == 0 and rec._writer._thread is None  # closed: no thread left


def test_a_mask_reused_in_place_by_the_caller_does_not_change_a_written_step(tmp_path):
    """Sums by category are taken on the writer thread after the step; a caller that refills
    one mask tensor for the next batch must not change them."""
    ids, _ = toy_batch(0)
    late = torch.zeros(ids.shape, dtype=torch.bool)
    late[:, ids.shape[1] // 2 :] = True
    runs = []
    for reuse in (False, True):
        mask = late.clone()
        model = tiny_toy()
        rec = TrainingRecorder(
            model,
            every=1,
            path=tmp_path / f"{reuse}.sqlite",
            categories=lambda b, mask=mask: {"m": mask},
        )
        with rec.step(0):
            token_loss(model(ids), ids).mean().backward()  # no rec.loss: masks read later
        if reuse:  # refilled before the writer ran (it waits for the next step or a flush)
            mask.copy_(~late)
        runs.append(rec.close())
    np.testing.assert_array_equal(runs[1].values, runs[0].values)
    assert runs[0].categories == ["all", "m"]


def test_probe_patterns_are_stored_while_training_and_deflated_on_close(tmp_path):
    """Patterns are written uncompressed during training (no deflate beside it), readable as
    they are by a run loaded mid-training or after a crash, and deflated by close(), which
    gives the space back."""
    import io
    import zipfile

    path = tmp_path / "r.sqlite"
    probes, _ = toy_batch(999, 64)  # 64 kB of patterns per probe step
    rec = TrainingRecorder(tiny_toy(), every=1, probes=probes, probe_every=2, path=path)
    train_toy(rec.model, 6, rec)

    def blobs():
        db = sqlite3.connect(path)
        out = [b for (b,) in db.execute("SELECT data FROM probe WHERE name = 'patterns'")]
        db.close()
        return out

    def methods():
        return {i.compress_type for b in blobs() for i in zipfile.ZipFile(io.BytesIO(b)).infolist()}

    mid = rec.run()
    assert methods() == {zipfile.ZIP_STORED} and mid.probe_steps.tolist() == [0, 2, 4]
    stored = sum(len(b) for b in blobs())
    crashed = tmp_path / "crashed.sqlite"
    shutil.copy(path, crashed)  # the file as a killed process would leave it (its log too)
    shutil.copy(f"{path}-wal", f"{crashed}-wal")
    run = rec.close()
    assert sum(len(b) for b in blobs()) < stored and methods() == {zipfile.ZIP_DEFLATED}
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA freelist_count").fetchone() == (0,)  # space given back
    db.close()
    np.testing.assert_array_equal(run.patterns, mid.patterns)
    np.testing.assert_array_equal(load_training_run(crashed).patterns, mid.patterns)
