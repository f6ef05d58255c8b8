"""Attribution graphs' memory: linear in tokens (no tokens x tokens buffer per row), and the
estimate (``estimate=True``, the cost model of docs/attribution_graphs.md) within a factor 2 of
the measured peak of live tensor bytes, at two prompt lengths, for both bases."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import circuitboard as cb
from circuitboard.intervene import _graph_rows
from circuitboard.intervene._graph_frozen import freeze
from circuitboard.intervene._graph_rows import NeuronBasis, compute_rows
from circuitboard.intervene._graph_transcoders import TranscoderBasis

WORDS = "the cat sat on a mat and then a dog ran to the park with the ball".split()


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of CPU tensor storage created inside the mode and still referenced, and the
    shape of every tensor created (a storage counts once, however many views share it)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}
        self.now = self.peak = 0
        self.shapes: list[tuple[int, ...]] = []

    def _drop(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.now -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            self.shapes.append(tuple(t.shape))
            st = t.untyped_storage()
            key = st.data_ptr()
            if key == 0:
                continue
            entry = self.live.get(key)
            if entry is None:
                self.live[key] = [st.nbytes(), 1]
                self.now += st.nbytes()
                self.peak = max(self.peak, self.now)
            else:
                entry[1] += 1
            weakref.finalize(t, self._drop, key)
        return out


@pytest.fixture(scope="module")
def model_tok():
    """A small Llama (4 layers, GQA) whose graph memory is large enough to measure."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from circuitboard.testing import tiny_tokenizer

    cfg = LlamaConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tiny_tokenizer("bos")


def _transcoders(n_layers: int, d_model: int = 64):
    from circuitboard.dictionaries import SAE

    return [
        SAE(
            d_model,
            256,
            d_out=d_model,
            kind="topk",
            k=8,
            hook=f"blocks.{i}.mlp.hook_in",
            hook_out=f"blocks.{i}.hook_mlp_out",
            seed=i,
        )
        for i in range(n_layers)
    ]


def _prompt(n_words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words))


@pytest.mark.parametrize("basis", ["neurons", "transcoders"])
def test_estimate_is_within_a_factor_2_of_measured_peak_at_two_lengths(model_tok, basis):
    model, tok = model_tok
    b = "neurons" if basis == "neurons" else _transcoders(4)
    ratios = []
    for n_words in (40, 160):
        prompt = _prompt(n_words)
        kw = dict(basis=b, max_nodes=32, batch_size=16, head_loadings=1, progress=False)
        est = cb.attribution_graph(model, tok, prompt, estimate=True, **kw)
        meter = LiveTensorBytes()
        with meter:
            cb.attribution_graph(model, tok, prompt, **kw)
        ratios.append(est["peak_bytes"] / meter.peak)
    assert all(0.5 <= r <= 2.0 for r in ratios), ratios


def test_rows_hold_no_tokens_by_tokens_tensor_and_stay_under_their_bound(model_tok, monkeypatch):
    """With patterns recomputed in blocks (as for long prompts), a batch of rows from targets
    in every layer creates no tensor with two token-sized dims, and its peak is the rows plus
    a bounded backward pass (not a ``rows x pos x d_model`` seed buffer per layer)."""
    model, tok = model_tok
    prompt = _prompt(120)
    fr = freeze(model, tok, prompt, keep_mlp_out=True, neurons=False, pattern_cache_bytes=0)
    assert fr.patterns.dense is None
    P, D = fr.n_pos, fr.d_model
    assert P > 200  # longer than a block of query rows (128)
    b = TranscoderBasis(fr, _transcoders(4))
    cand = torch.arange(b.n_basis - 1, 0, -max(1, b.n_basis // 48))[:48]  # all layers, late pos
    assert len(b.layer[cand].unique()) == 4
    monkeypatch.setattr(_graph_rows, "BACKWARD_BYTES", 4 * 8 * P * D)  # 8 rows per pass
    meter = LiveTensorBytes()
    with meter:
        rows, bias = compute_rows(b, cand=cand)
    big = [s for s in meter.shapes if sum(d >= P for d in s) >= 2]
    assert not big, big[:3]
    bound = rows.numel() * 4 + 2 * _graph_rows.BACKWARD_COPIES * 4 * 8 * P * D + 4 * 2**20
    assert meter.peak <= bound, (meter.peak, bound)
    # and the rows are exact: edges plus bias give each feature's pre-activation
    total = rows.double().sum(1) + bias.double()
    torch.testing.assert_close(total, b.pre[cand].double(), atol=1e-4, rtol=1e-4)


def test_blocked_patterns_and_split_backward_give_the_same_rows(model_tok, monkeypatch):
    model, tok = model_tok
    prompt = _prompt(90)
    dense = freeze(model, tok, prompt)
    blocked = freeze(model, tok, prompt, pattern_cache_bytes=0)
    assert dense.patterns.dense is not None and blocked.patterns.dense is None
    torch.testing.assert_close(blocked.patterns[2], dense.patterns[2])
    V = dense.W_U.shape[1]
    dirs = torch.eye(V)[[5, 17]]
    bd, bb = NeuronBasis(dense), NeuronBasis(blocked)
    cand = torch.arange(0, bd.n_basis, bd.n_basis // 40)
    want, want_bias = compute_rows(bd, dirs, cand)
    monkeypatch.setattr(_graph_rows, "BACKWARD_BYTES", 1)  # one row per backward pass
    got, got_bias = compute_rows(bb, dirs, cand)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_bias, want_bias, atol=1e-5, rtol=1e-4)
    # each row plus its bias is its target's value: logits, then neuron activations
    with torch.no_grad():
        logits = model(tok(prompt, return_tensors="pt")["input_ids"]).logits[0, -1]
    total = got.double().sum(1) + got_bias.double()
    target = torch.cat([logits[[5, 17]].double(), bb.activation(cand).double()])
    torch.testing.assert_close(total, target, atol=1e-4, rtol=1e-4)


def test_a_batch_whose_rows_would_pass_the_buffer_bound_gets_fewer_rows(monkeypatch):
    from circuitboard.intervene import _graph_attribute as ga

    assert ga.batch_rows(64, 1000) == 64
    monkeypatch.setattr(ga, "ROW_BUFFER_BYTES", 4 * 1000 * 10)
    assert ga.batch_rows(64, 1000) == 10
    assert ga.batch_rows(64, 10**9) == 1
