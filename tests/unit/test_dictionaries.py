"""Dictionaries: the SAE module's maps against numpy references, exact errors, the loaders for
SAELens / sparsify / circuit-tracer layouts built by hand, save/load, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import circuitboard as cb
from circuitboard.dictionaries import (
    SAE,
    CrossLayerTranscoder,
    TranscoderSet,
    detect_format,
    load_sae,
    to_capture_name,
)

RNG = np.random.default_rng(0)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _random_sae(kind: str, d_in: int = 12, d_sae: int = 40, **kw) -> SAE:
    g = torch.Generator().manual_seed(3)
    k = 5 if kind in ("topk", "batchtopk") else None
    thr = torch.rand(d_sae, generator=g) * 0.5 if kind in ("jumprelu", "batchtopk") else None
    return SAE(
        d_in,
        d_sae,
        kind=kind,
        k=k,
        hook="blocks.1.hook_resid_post",
        W_enc=torch.randn(d_in, d_sae, generator=g),
        b_enc=torch.randn(d_sae, generator=g) * 0.1,
        W_dec=torch.randn(d_sae, d_in, generator=g),
        b_dec=torch.randn(d_in, generator=g),
        threshold=thr,
        **kw,
    )


# -- numpy references, written from the formats' documentation ------------------------------
def ref_pre(sae: SAE, x: np.ndarray, center: bool) -> np.ndarray:
    b_dec = _np(sae.b_dec)
    return ((x - b_dec) if center else x) @ _np(sae.W_enc) + _np(sae.b_enc)


def ref_encode(sae: SAE, x: np.ndarray, center: bool = True) -> np.ndarray:
    pre = ref_pre(sae, x, center)
    if sae.kind == "relu":
        return np.maximum(pre, 0)
    if sae.kind == "topk":  # SAELens / sparsify: keep the k largest, ReLU them
        out = np.zeros_like(pre)
        top = np.argsort(-pre, axis=-1)[:, : sae.k]
        rows = np.arange(pre.shape[0])[:, None]
        out[rows, top] = np.maximum(pre[rows, top], 0)
        return out
    thr = _np(sae.threshold)  # JumpReLU (and BatchTopK at inference): pre where pre > threshold
    return np.where(pre > thr, np.maximum(pre, 0), 0)


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu"])
def test_encode_matches_numpy_reference_and_error_is_exact(kind: str) -> None:
    sae = _random_sae(kind)
    x = torch.randn(64, 12) * 3
    f = sae.encode(x)
    np.testing.assert_allclose(_np(f), ref_encode(sae, _np(x)), rtol=1e-5, atol=1e-5)
    if kind == "topk":
        assert int((f > 0).sum(-1).max()) <= 5
    recon = _np(f) @ _np(sae.W_dec) + _np(sae.b_dec)
    out = sae(x)
    np.testing.assert_allclose(_np(out.reconstruction), recon, rtol=1e-5, atol=1e-4)
    # decode(encode(x)) + error == x, exactly (the error is kept wide enough)
    assert torch.equal(((sae.decode(sae.encode(x)) + out.error).to(x.dtype)), x)
    assert bool(((out.reconstruction + out.error) == x).all())


def test_error_is_exact_for_bfloat16_inputs_and_half_dictionaries() -> None:
    sae = _random_sae("topk").to(torch.bfloat16)
    x = (torch.randn(32, 12) * 5).to(torch.bfloat16)
    out = sae(x)
    assert out.error.dtype == torch.float32
    assert bool(((out.reconstruction + out.error) == x).all())


def test_skip_transcoder_decodes_with_its_input() -> None:
    g = torch.Generator().manual_seed(1)
    tc = SAE(
        6, 20, d_out=4, hook="blocks.0.ln2.hook_normalized", hook_out="blocks.0.hook_mlp_out",
        W_skip=torch.randn(4, 6, generator=g), b_dec=torch.randn(4, generator=g),
    )  # fmt: skip
    assert tc.is_transcoder and tc.hook == "blocks.0.mlp.hook_in" and not tc.center_input
    x, y = torch.randn(10, 6), torch.randn(10, 4)
    f = tc.encode(x)
    np.testing.assert_allclose(_np(f), ref_encode(tc, _np(x), center=False), rtol=1e-5, atol=1e-5)
    want = _np(f) @ _np(tc.W_dec) + _np(tc.b_dec) + _np(x) @ _np(tc.W_skip).T
    out = tc(x, target=y)
    np.testing.assert_allclose(_np(out.reconstruction), want, rtol=1e-5, atol=1e-5)
    assert bool(((out.reconstruction + out.error) == y).all())
    assert tc(x).error is None  # no target: a transcoder's error is unknown
    with pytest.raises(ValueError, match="skip matrix"):
        tc.decode(f)


def test_feature_is_the_decoder_row() -> None:
    sae = _random_sae("relu")
    assert torch.equal(sae.feature(7), sae.W_dec[7].detach())
    with pytest.raises(IndexError, match="out of range"):
        sae.feature(40)


def test_hook_names_from_other_libraries_map_to_capture_names() -> None:
    assert to_capture_name("blocks.6.ln2.hook_normalized") == "blocks.6.mlp.hook_in"
    assert to_capture_name("blocks.6.hook_mlp_in") == "blocks.6.hook_resid_mid"
    assert to_capture_name("blocks.6.mlp.hook_out") == "blocks.6.hook_mlp_out"
    assert to_capture_name("blocks.6.hook_resid_pre") == "blocks.6.hook_resid_pre"
    assert to_capture_name("hook_resid_mid", 4) == "blocks.4.hook_resid_mid"
    assert to_capture_name("model.layers.2") == "blocks.2.hook_resid_post"
    with pytest.raises(ValueError, match="does not know the site"):
        to_capture_name("blocks.6.hook_banana")
    with pytest.raises(ValueError, match="names no layer"):
        to_capture_name("hook_resid_pre")


# -- SAELens -----------------------------------------------------------------------------------
def _write_saelens(folder: Path, sae: SAE, cfg: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold.clone()
    save_file(tensors, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def test_loads_a_saelens_folder_with_legacy_hook_point(tmp_path: Path) -> None:
    ref = _random_sae("jumprelu")
    cfg = {
        "architecture": "jumprelu",
        "d_in": 12,
        "d_sae": 40,
        "hook_point": "blocks.1.hook_resid_pre",
    }
    sae = load_sae(_write_saelens(tmp_path / "s", ref, cfg))
    assert sae.kind == "jumprelu" and sae.hook == "blocks.1.hook_resid_pre"
    x = torch.randn(16, 12)
    np.testing.assert_allclose(_np(sae.encode(x)), ref_encode(ref, _np(x)), rtol=1e-5, atol=1e-5)


def test_loads_a_saelens_6_topk_folder(tmp_path: Path) -> None:
    ref = _random_sae("topk")
    cfg = {
        "architecture": "topk", "d_in": 12, "d_sae": 40, "k": 5, "apply_b_dec_to_input": True,
        "normalize_activations": "none", "metadata": {"hook_name": "blocks.1.hook_resid_post"},
    }  # fmt: skip
    sae = cb.SAE.load(_write_saelens(tmp_path / "s", ref, cfg))
    assert (sae.kind, sae.k, sae.hook) == ("topk", 5, "blocks.1.hook_resid_post")
    x = torch.randn(16, 12)
    assert torch.equal(sae.encode(x), ref.encode(x))


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu"])
def test_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    sae = _random_sae(kind, labels=[f"feat {i}" for i in range(40)], metadata={"note": "x"})
    back = SAE.load(sae.save(tmp_path / kind))
    assert (back.kind, back.k, back.hook, back.labels) == (sae.kind, sae.k, sae.hook, sae.labels)
    assert back.metadata["note"] == "x"
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, n), getattr(sae, n))
    x = torch.randn(8, 12)
    assert torch.equal(back(x).reconstruction, sae(x).reconstruction)
    cfg = json.loads((tmp_path / kind / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"


def test_transcoder_round_trip_keeps_hooks_and_skip(tmp_path: Path) -> None:
    tc = SAE(8, 16, d_out=8, kind="topk", k=3, hook="blocks.2.mlp.hook_in",
             hook_out="blocks.2.hook_mlp_out", W_skip=torch.randn(8, 8))  # fmt: skip
    back = SAE.load(tc.save(tmp_path / "tc"))
    assert (back.hook, back.hook_out, back.is_transcoder) == (tc.hook, tc.hook_out, True)
    x = torch.randn(5, 8)
    assert torch.equal(back(x).reconstruction, tc(x).reconstruction)


def test_same_outputs_as_sae_lens(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip(
        "sae_lens", reason="sae_lens is not installed (it fails to import with TransformerLens 4)"
    )
    sae = _random_sae("jumprelu")
    folder = sae.save(tmp_path / "s")
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    x = torch.randn(16, 12)
    torch.testing.assert_close(theirs.encode(x), sae.encode(x))
    torch.testing.assert_close(theirs.decode(theirs.encode(x)), sae(x).reconstruction)


# -- sparsify ----------------------------------------------------------------------------------
def _write_sparsify(folder: Path, d_in: int, n: int, k: int, seed: int, transcode: bool = False):
    g = torch.Generator().manual_seed(seed)
    t = {
        "encoder.weight": torch.randn(n, d_in, generator=g),  # [num_latents, d_in]
        "encoder.bias": torch.randn(n, generator=g) * 0.1,
        "W_dec": torch.randn(n, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }
    folder.mkdir(parents=True)
    save_file(t, folder / "sae.safetensors")
    cfg = {"k": k, "num_latents": n, "expansion_factor": n // d_in, "d_in": d_in,
           "transcode": transcode, "activation": "topk", "normalize_decoder": True}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


def test_loads_a_sparsify_folder_and_says_it_was_transposed(tmp_path: Path) -> None:
    t = _write_sparsify(tmp_path / "layers.3", 8, 24, 4, seed=0)
    sae = SAE.load(tmp_path / "layers.3")
    assert (sae.kind, sae.k, sae.hook) == ("topk", 4, "blocks.3.hook_resid_post")
    assert "transposed" in sae.metadata["layout"]
    x = torch.randn(10, 8)
    pre = (_np(x) - _np(t["b_dec"])) @ _np(t["encoder.weight"]).T + _np(t["encoder.bias"])
    pre = np.maximum(pre, 0)  # sparsify: ReLU, then the top k
    want = np.zeros_like(pre)
    top = np.argsort(-pre, -1)[:, :4]
    rows = np.arange(10)[:, None]
    want[rows, top] = pre[rows, top]
    np.testing.assert_allclose(_np(sae.encode(x)), want, rtol=1e-5, atol=1e-5)
    recon = want @ _np(t["W_dec"]) + _np(t["b_dec"])
    np.testing.assert_allclose(_np(sae(x).reconstruction), recon, rtol=1e-5, atol=1e-4)


def test_loads_a_sparsify_folder_of_hookpoints_in_layer_order(tmp_path: Path) -> None:
    for name in ("layers.10", "layers.2", "layers.2.mlp"):
        _write_sparsify(tmp_path / name, 8, 16, 2, seed=1, transcode=name.endswith("mlp"))
    assert detect_format(tmp_path) == "sparsify-many"
    saes = load_sae(tmp_path)
    assert [s.hook for s in saes] == [
        "blocks.2.hook_resid_post", "blocks.2.mlp.hook_in", "blocks.10.hook_resid_post"
    ]  # fmt: skip
    assert saes[1].is_transcoder and saes[1].hook_out == "blocks.2.hook_mlp_out"


# -- circuit-tracer ----------------------------------------------------------------------------
def test_loads_a_circuit_tracer_transcoder_set(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    d_model, d_t, files = 6, 18, []
    for layer in range(3):
        t = {
            "W_enc": torch.randn(d_t, d_model, generator=g),  # [d_transcoder, d_model]
            "b_enc": torch.randn(d_t, generator=g) * 0.1,
            "W_dec": torch.randn(
                d_model, d_t, generator=g
            ),  # transposed, as circuit-tracer reads it
            "b_dec": torch.randn(d_model, generator=g),
            "W_skip": torch.randn(d_model, d_model, generator=g),
        }
        if layer == 1:
            t["threshold"] = torch.rand(d_t, generator=g)
        save_file(t, tmp_path / f"layer_{layer}.safetensors")
        files.append(t)
    cfg = (
        "model_name: tiny\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n"
        "transcoders:\n"
        + "".join(
            f"  - id: l{i}\n    layer: {i}\n    filepath: layer_{i}.safetensors\n" for i in range(3)
        )
    )
    (tmp_path / "config.yaml").write_text(cfg)
    ts = load_sae(tmp_path / "config.yaml")
    assert isinstance(ts, TranscoderSet) and ts.layers == [0, 1, 2]
    assert ts[1].kind == "jumprelu" and ts[0].kind == "relu"
    assert ts[2].hook == "blocks.2.mlp.hook_in" and ts[2].hook_out == "blocks.2.hook_mlp_out"
    x = torch.randn(7, d_model)
    for layer, t in enumerate(files):
        pre = _np(x) @ _np(t["W_enc"]).T + _np(t["b_enc"])
        f = np.where(pre > _np(t["threshold"]), pre, 0) if layer == 1 else np.maximum(pre, 0)
        want = f @ _np(t["W_dec"]).T + _np(t["b_dec"]) + _np(x) @ _np(t["W_skip"]).T
        np.testing.assert_allclose(_np(ts[layer](x).reconstruction), want, rtol=1e-4, atol=1e-4)


def test_loads_a_cross_layer_transcoder(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    n, d_model, d_t = 3, 5, 9
    enc, dec = [], []
    for i in range(n):
        e = {
            f"W_enc_{i}": torch.randn(d_t, d_model, generator=g),
            f"b_enc_{i}": torch.randn(d_t, generator=g) * 0.1,
            f"b_dec_{i}": torch.randn(d_model, generator=g),
            f"threshold_{i}": torch.rand(d_t, generator=g) * 0.3,
        }
        d = {f"W_dec_{i}": torch.randn(d_t, n - i, d_model, generator=g)}
        save_file(e, tmp_path / f"W_enc_{i}.safetensors")
        save_file(d, tmp_path / f"W_dec_{i}.safetensors")
        enc.append(e)
        dec.append(d[f"W_dec_{i}"])
    clt = load_sae(tmp_path)
    assert isinstance(clt, CrossLayerTranscoder) and clt.n_layers == 3
    xs = [torch.randn(4, d_model) for _ in range(n)]
    feats = [clt.encode(x, i) for i, x in enumerate(xs)]
    outs = clt.decode(feats)
    ref_f = []
    for i, x in enumerate(xs):
        pre = _np(x) @ _np(enc[i][f"W_enc_{i}"]).T + _np(enc[i][f"b_enc_{i}"])
        ref_f.append(np.where(pre > _np(enc[i][f"threshold_{i}"]), pre, 0))
    for j in range(n):
        want = _np(enc[j][f"b_dec_{j}"]) + sum(
            ref_f[i] @ _np(dec[i][:, j - i]) for i in range(j + 1)
        )
        np.testing.assert_allclose(_np(outs[j]), want, rtol=1e-4, atol=1e-4)
    assert torch.equal(clt.feature(1, 2), dec[1][2])
    assert clt.hook(2) == "blocks.2.hook_resid_mid" and clt.hook_out(0) == "blocks.0.hook_mlp_out"


def test_sae_lens_objects_are_taken_as_they_are() -> None:
    class Cfg:
        d_in, d_sae, k = 12, 40, 5
        apply_b_dec_to_input = True
        normalize_activations = "none"
        hook_name = "blocks.1.hook_resid_post"

        @staticmethod
        def architecture() -> str:
            return "topk"

    ref = _random_sae("topk")

    class Fake:
        cfg = Cfg()
        W_enc, b_enc, W_dec, b_dec = ref.W_enc, ref.b_enc, ref.W_dec, ref.b_dec

    sae = load_sae(Fake())
    x = torch.randn(6, 12)
    assert torch.equal(sae.encode(x), ref.encode(x)) and sae.hook == ref.hook


# -- bad inputs ------------------------------------------------------------------------------
def test_bad_inputs_say_what_was_found_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown SAE kind 'gated'"):
        SAE(4, 8, kind="gated")
    with pytest.raises(ValueError, match=r"W_enc has shape \(8, 4\); expected \(4, 8\)"):
        SAE(4, 8, W_enc=torch.zeros(8, 4))
    with pytest.raises(ValueError, match="needs k"):
        SAE(4, 8, kind="topk")
    sae = _random_sae("relu")
    with pytest.raises(ValueError, match="input has width 5"):
        sae.encode(torch.zeros(2, 5))
    ref = _random_sae("relu")
    folder = _write_saelens(tmp_path / "gated", ref, {"architecture": "gated", "d_in": 12})
    with pytest.raises(ValueError, match="unknown architecture 'gated'"):
        load_sae(folder)
    save_file({"W_enc": ref.W_enc.detach()}, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard"}))
    with pytest.raises(ValueError, match="has no tensor 'b_enc'"):
        load_sae(folder)
    bad = {n: getattr(ref, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    bad["W_dec"][3, 2] = float("nan")
    save_file(bad, folder / "sae_weights.safetensors")
    with pytest.raises(ValueError, match="W_dec holds 1 NaN"):
        load_sae(folder)
    data = (folder / "sae_weights.safetensors").read_bytes()
    (folder / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_sae(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no dictionary circuitboard recognises"):
        load_sae(tmp_path / "empty")
    (folder / "cfg.json").write_text('{"architecture": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_sae(folder)


def test_a_dictionary_that_does_not_fit_the_model_says_so() -> None:
    from tests.unit.tiny_models import tiny_smollm

    model, _ = tiny_smollm()  # d_model 48, 2 layers
    with pytest.raises(ValueError, match="d_in=12 does not fit"):
        _random_sae("relu").check_fits(model)
    deep = SAE(48, 8, hook="blocks.7.hook_resid_post")
    with pytest.raises(ValueError, match="layer 7, but .* has 2 layers"):
        deep.check_fits(model)
    SAE(48, 8, hook="blocks.1.hook_resid_post").check_fits(model)  # fits: no error
