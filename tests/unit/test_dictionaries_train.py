"""Training dictionaries: planted features recovered, determinism, resume equals an
uninterrupted run, activations equal capture's, and the held-out metrics' endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import circuitboard as cb
from circuitboard.dictionaries import SAE, evaluate_sae, fit_sae, train_sae
from circuitboard.dictionaries._activations import run_to_hooks, splice
from tests.unit.tiny_models import CORPUS, tiny_smollm


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def planted(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples made of 3 of 64 random unit directions in 32 dims, with positive weights (the
    directions are fixed; ``seed`` draws the samples)."""
    feats = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    feats /= feats.norm(dim=-1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, 64, generator=g).argsort(-1)[:, :3]
    coef = torch.rand(n, 3, generator=g) * 2 + 0.5
    return (coef[..., None] * feats[idx]).sum(1) + 0.3, feats


def test_recovers_planted_sparse_features() -> None:
    x, feats = planted(32_768)
    sae = fit_sae(x, d_sae=128, k=4, epochs=8, batch_size=1024, buffer_tokens=8192, lr=1e-3)
    held = planted(4096, seed=2)[0]  # fresh samples of the same directions
    out = sae(held)
    fvu = float(out.error.detach().pow(2).sum() / (held - held.mean(0)).pow(2).sum().double())
    best_cos = (feats @ sae.W_dec.detach().T).max(-1).values
    assert float(best_cos.mean()) >= 0.9, float(best_cos.mean())
    assert fvu <= 0.15, fvu  # measured 0.07 (3 true features per sample, k = 4)


@pytest.mark.parametrize("kind", ["topk", "jumprelu"])
def test_fit_is_deterministic_and_resume_equals_an_uninterrupted_run(
    tmp_path: Path, kind: str
) -> None:
    x = torch.randn(6000, 16) * 2 + 1
    kw = dict(d_sae=48, k=4, kind=kind, epochs=2, batch_size=500, buffer_tokens=2000, seed=5)
    a = fit_sae(x, **kw)
    b = fit_sae(x, **kw)
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.W_enc, b.W_enc)
    c = fit_sae(x, **{**kw, "seed": 6})
    assert not torch.equal(a.W_dec, c.W_dec)
    part = fit_sae(x, **kw, checkpoint=tmp_path / "ck", checkpoint_every=3, max_steps=7)
    assert part.metadata["training"]["steps"] == 7 and not part.metadata["training"]["finished"]
    resumed = fit_sae(x, **kw, checkpoint=tmp_path / "ck", checkpoint_every=3)
    assert resumed.metadata["training"]["finished"]
    for n in ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if kind == "jumprelu" else ()):
        assert torch.equal(getattr(resumed, n), getattr(a, n)), n


def test_batchtopk_infers_as_jumprelu_with_its_threshold() -> None:
    x, _ = planted(8192)
    sae = fit_sae(x, d_sae=96, k=4, kind="batchtopk", batch_size=1024, buffer_tokens=4096)
    assert sae.kind == "batchtopk" and float(sae.threshold.min()) > 0
    f = sae.encode(x[:512])
    assert bool(((f == 0) | (f > sae.threshold)).all())
    assert 1.0 < float((f > 0).sum(-1).float().mean()) < 12.0  # about k = 4 on average


def test_jumprelu_learns_a_threshold_per_feature_and_recovers_planted_features() -> None:
    x, feats = planted(32_768)
    sae = fit_sae(
        x, d_sae=128, k=4, kind="jumprelu", epochs=8, batch_size=1024, buffer_tokens=8192, lr=1e-3
    )
    assert sae.kind == "jumprelu" and sae.threshold.shape == (128,)
    assert float(sae.threshold.std()) > 0  # learned per feature, not one shared cut
    held = planted(4096, seed=2)[0]
    f = sae.encode(held)
    assert bool(((f == 0) | (f > sae.threshold)).all())
    l0 = float((f > 0).sum(-1).float().mean())
    assert 2.5 <= l0 <= 5.5, l0  # the L0 penalty adapts towards k = 4 (measured 3.55)
    out = sae(held)
    fvu = float(out.error.detach().pow(2).sum() / (held - held.mean(0)).pow(2).sum().double())
    best_cos = (feats @ sae.W_dec.detach().T).max(-1).values
    assert float(best_cos.mean()) >= 0.9, float(best_cos.mean())
    assert fvu <= 0.15, fvu  # measured 0.099


def test_jumprelu_threshold_gradient_is_the_rectangle_kernel_pseudo_derivative() -> None:
    """Rajamanoharan et al. 2024, eqs. 11-12: for a pre-activation z within eps/2 of its
    threshold t, d f / d t = -t / eps and d H(z - t) / d t = -1 / eps; elsewhere 0."""
    import numpy as np

    from circuitboard.dictionaries._step import Spec, Trainee

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 8, generator=gen)
    spec = Spec(None, None, 8, 8, 16, "jumprelu", k=3, skip=False, lr=1e-3, bandwidth=0.5)
    t = Trainee(spec, x, x, seed=0)
    t.l0_coef = 0.01
    pre = torch.randn(64, 16, generator=gen).abs() * float(t.log_threshold[0].detach().exp()) * 2
    g_recon = torch.randn(64, 8, generator=gen)
    got = t._threshold_grad(pre, g_recon, t.dec.detach())

    theta = t.log_threshold.detach().exp().numpy().astype(np.float64)
    P, G, D = pre.numpy().astype(np.float64), g_recon.numpy(), t.dec.detach().numpy()
    want = np.zeros(16)
    for b in range(64):
        for i in range(16):
            if abs(P[b, i] - theta[i]) < t.eps / 2:
                g_f = float(G[b] @ D[i])  # d loss / d f[b, i]
                want[i] += g_f * -theta[i] / t.eps - t.l0_coef / (64 * t.eps)
    want *= theta  # with respect to log(threshold)
    assert int((np.abs(P - theta) < t.eps / 2).sum()) > 10  # the band is not empty
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def test_transcoder_with_skip_learns_a_linear_map() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 12, generator=g)
    A = torch.randn(12, 10, generator=g)
    y = x @ A
    tc = fit_sae(
        x, y, d_sae=32, k=2, skip=True, epochs=4, batch_size=256, buffer_tokens=4096, lr=1e-2,
        hook="blocks.0.mlp.hook_in", hook_out="blocks.0.hook_mlp_out",
    )  # fmt: skip
    assert tc.is_transcoder and tc.W_skip is not None
    out = tc(x[:1000], target=y[:1000])
    fvu = float(out.error.detach().pow(2).sum() / (y[:1000] - y[:1000].mean(0)).pow(2).sum())
    assert fvu < 0.05, fvu  # the skip matrix carries the linear part


def test_activations_equal_captures() -> None:
    model, tok = tiny_smollm()
    text = CORPUS[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    names = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre"]
    acts = run_to_hooks(model, torch.tensor([ids]), names)
    cap = cb.capture(
        model, tok, text, dtype=torch.float32, what=["resid_pre", "resid_post", "mlp_out"]
    )
    assert cap.n_tokens == len(ids)
    for name in names:
        torch.testing.assert_close(acts[name], cap[name][1:].float(), rtol=0, atol=1e-6)


def test_train_sae_on_a_tiny_model_resumes_exactly(tmp_path: Path) -> None:
    model, tok = tiny_smollm()
    texts = CORPUS * 8
    kw = dict(
        hook=["blocks.1.hook_resid_post", "blocks.0.mlp.hook_in"],
        transcoder_out=[None, "blocks.0.hook_mlp_out"], skip=True, d_sae=64, k=4,
        tokens=600, epochs=2, batch_size=100, buffer_tokens=300, seq_len=16, progress=False,
    )  # fmt: skip
    full = train_sae(model, tok, texts, **kw)
    assert [s.hook for s in full] == ["blocks.1.hook_resid_post", "blocks.0.mlp.hook_in"]
    assert full[1].hook_out == "blocks.0.hook_mlp_out" and full[1].W_skip is not None
    train_sae(model, tok, texts, **kw, checkpoint=tmp_path / "ck", checkpoint_every=2, max_steps=9)
    resumed = train_sae(model, tok, texts, **kw, checkpoint=tmp_path / "ck")
    for a, b in zip(full, resumed, strict=True):
        for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.equal(getattr(a, n), getattr(b, n)), n


def test_evaluate_endpoints_a_perfect_dictionary_recovers_everything() -> None:
    model, tok = tiny_smollm()
    d = 48
    eye = torch.eye(d)
    # relu(x) - relu(-x) == x exactly: a lossless ReLU "dictionary" with 2d features
    perfect = SAE(d, 2 * d, kind="relu", hook="blocks.0.hook_resid_post",
                  W_enc=torch.cat([eye, -eye], 1), W_dec=torch.cat([eye, -eye], 0),
                  center_input=False)  # fmt: skip
    r = evaluate_sae(model, tok, perfect, CORPUS * 3, tokens=200, seq_len=16)
    assert r["explained_variance"] == 1.0 and r["ce_spliced"] == r["ce_clean"]
    assert r["ce_recovered"] == 1.0
    assert r["ce_zero"] != r["ce_clean"]


def test_training_refuses_what_it_cannot_do() -> None:
    model, tok = tiny_smollm()
    with pytest.raises(ValueError, match="'topk', 'batchtopk' or 'jumprelu'"):
        train_sae(model, tok, CORPUS, hook="blocks.0.hook_resid_post", d_sae=8, kind="gated")
    with pytest.raises(ValueError, match="give one per hook"):
        train_sae(model, tok, CORPUS, hook=["blocks.0.hook_resid_post"], d_sae=8,
                  transcoder_out=[None, None])  # fmt: skip
    with pytest.raises(ValueError, match="asked for more"):
        train_sae(model, tok, CORPUS, hook="blocks.0.hook_resid_post", d_sae=8, k=2,
                  tokens=10**7, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="cannot splice at 'blocks.0.hook_resid_mid'"):
        with splice(model, "blocks.0.hook_resid_mid", lambda a: a):
            pass
    with pytest.raises(ValueError, match="2-D tensor"):
        fit_sae(torch.zeros(4, 2, 8), d_sae=8)


def test_sink_rows_are_left_out_of_training() -> None:
    from circuitboard.dictionaries._train import sink_rows

    gen = torch.Generator().manual_seed(0)
    acts = {"a": torch.randn(100, 8, generator=gen), "b": torch.randn(100, 8, generator=gen)}
    acts["a"][7] *= 40  # a sink at one hook is a sink for the dictionary
    acts["b"][42] *= 40
    assert sink_rows(acts, 5.0).nonzero().flatten().tolist() == [7, 42]
    model, tok = tiny_smollm()
    texts = CORPUS * 8
    kw = dict(hook="blocks.0.hook_resid_post", d_sae=16, k=2, tokens=240, batch_size=60,
              buffer_tokens=120, seq_len=16, progress=False)  # fmt: skip
    kept = train_sae(model, tok, texts, **kw, sink_ratio=1.0)  # the median itself: about half
    assert kept.metadata["training"]["sink_rows_dropped"] > 60
    everything = train_sae(model, tok, texts, **kw, sink_ratio=None)
    assert everything.metadata["training"]["sink_rows_dropped"] == 0
