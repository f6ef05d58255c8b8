"""cb.generate / Generation.fork / steering on tiny models: exactness, forks, hooks, bad input."""

from __future__ import annotations

import pytest
import torch

import circuitboard as cb
from circuitboard.intervene import generate, steering_vector
from tests.unit.gen_helpers import max_diff, single_forward
from tests.unit.tiny_models import tiny_gpt2, tiny_llama

PROMPT = "When Mary and John went to the store"


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def n_hooks(model) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
        for m in model.modules()
    )


def vec(model, seed=0, norm=3.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(model.config.hidden_size, generator=g)
    return v / v.norm() * norm


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "seed": 7}], ids=["greedy", "seeded"])
def test_capture_equals_single_forward(factory, sampling):
    model, tok = factory()
    gen = generate(model, tok, PROMPT, max_new_tokens=6, stop_at_eos=False, what="all", **sampling)
    assert gen.capture.n_tokens == gen.n_prompt + 6 and gen.capture.n_generated == 6
    assert gen.capture.info.attention_path == "interface"  # q/k recorded, patterns on demand
    tensors, logits = single_forward(model, gen.capture.token_ids.tolist())
    assert max_diff(gen.capture, tensors, logits) <= 1e-4
    # the patterns recomputed from the steps' queries and keys are eager attention's weights
    eager, _ = single_forward(model, gen.capture.token_ids.tolist(), what=["pattern"], qk=False)
    assert max_diff(gen.capture, eager, logits) <= 1e-4
    # steered too: the single forward adds the same vector through its own hook
    v = vec(model)
    steered = generate(
        model,
        tok,
        PROMPT,
        max_new_tokens=6,
        stop_at_eos=False,
        what="all",
        steer=v,
        layer=1,
        scale=2.0,
        **sampling,
    )
    add = torch.zeros(steered.capture.n_tokens, v.numel())
    add[:] = 2.0 * v
    assert torch.allclose(steered.steer_added[1], add)
    tensors, logits = single_forward(model, steered.capture.token_ids.tolist(), add={1: add})
    assert max_diff(steered.capture, tensors, logits) <= 1e-4


def test_seeded_sampling_is_reproducible(llama):
    model, tok = llama
    a = generate(model, tok, PROMPT, max_new_tokens=8, do_sample=True, seed=3, stop_at_eos=False)
    b = generate(model, tok, PROMPT, max_new_tokens=8, do_sample=True, seed=3, stop_at_eos=False)
    g = generate(model, tok, PROMPT, max_new_tokens=8, stop_at_eos=False)
    assert a.token_ids == b.token_ids and a.sampling.seed == 3
    assert "seed=3" in repr(a) and "greedy" in repr(g)


def test_scale_zero_changes_nothing(llama):
    model, tok = llama
    plain = generate(model, tok, PROMPT, max_new_tokens=6, stop_at_eos=False)
    zero = generate(
        model,
        tok,
        PROMPT,
        max_new_tokens=6,
        stop_at_eos=False,
        steer=vec(model),
        layer=1,
        scale=0.0,
    )
    assert zero.text == plain.text and zero.token_ids == plain.token_ids
    assert torch.equal(zero.capture.logits, plain.capture.logits)
    fn = generate(
        model,
        tok,
        PROMPT,
        max_new_tokens=6,
        stop_at_eos=False,
        steer=lambda x, pos: x * 5,
        layer=0,
        scale=0.0,
    )
    assert torch.equal(fn.capture.logits, plain.capture.logits)
    strong = generate(
        model,
        tok,
        PROMPT,
        max_new_tokens=6,
        stop_at_eos=False,
        steer=vec(model, norm=50.0),
        layer=1,
        scale=1.0,
    )
    assert not torch.equal(strong.capture.logits, plain.capture.logits)


def test_positions_new_leaves_the_prompt_alone(llama):
    model, tok = llama
    plain = generate(model, tok, PROMPT, max_new_tokens=4, stop_at_eos=False)
    new = generate(
        model,
        tok,
        PROMPT,
        max_new_tokens=4,
        stop_at_eos=False,
        steer=vec(model),
        layer=1,
        positions="new",
    )
    n = plain.n_prompt
    assert torch.equal(new.capture.logits[: n - 1], plain.capture.logits[: n - 1])
    assert not torch.allclose(new.capture.logits[n - 1], plain.capture.logits[n - 1])
    assert float(new.steer_added[1][: n - 1].abs().max()) == 0.0
    assert float(new.steer_added[1][n - 1 :].norm(dim=-1).min()) > 2.9


def test_fork_shares_its_prefix_exactly(llama):
    model, tok = llama
    v = vec(model)
    gen = generate(model, tok, PROMPT, max_new_tokens=8, stop_at_eos=False, steer=v, layer=1)
    same = gen.fork(3)
    assert same.token_ids == gen.token_ids  # same intervention: the parent again
    assert torch.equal(same.capture.logits, gen.capture.logits)
    fork = gen.fork(3, steer=vec(model, seed=1, norm=20.0), layer=0, scale=2.0)
    assert fork.parent is gen and fork.fork_step == 3 and fork.n_steps == 8
    assert fork.token_ids[:3] == gen.token_ids[:3]
    m = gen.n_prompt + 3 - 1  # positions before the fork's first forward
    assert fork.capture.tokens[: m + 1] == gen.capture.tokens[: m + 1]
    for name, t in gen.capture.tensors.items():
        mine = fork.capture[name]
        if name.endswith("hook_pattern"):
            assert torch.equal(mine[:, :m, :m], t[:, :m, :m]), name
        else:
            assert torch.equal(mine[:m], t[:m]), name
    assert torch.equal(fork.capture.logits[:m], gen.capture.logits[:m])
    assert not torch.allclose(fork.capture.logits[m], gen.capture.logits[m])
    # the fork equals one forward with the parent's steering before the fork and its own after
    add = {li: d for li, d in fork.steer_added.items()}
    assert set(add) == {0, 1}
    assert float(add[1][m:].abs().max()) == 0.0 and float(add[0][:m].abs().max()) == 0.0
    tensors, logits = single_forward(model, fork.capture.token_ids.tolist(), what=None, add=add)
    assert max_diff(fork.capture, tensors, logits) <= 1e-4
    kl = gen.kl(fork)
    assert kl.shape == (8,) and float(kl[:3].abs().max()) == 0.0 and float(kl[3]) > 0


def test_fork_with_text_and_edges(llama):
    model, tok = llama
    gen = generate(model, tok, PROMPT, max_new_tokens=5, stop_at_eos=False)
    forced = gen.fork(2, text=" the store")
    ids = tok(" the store", add_special_tokens=False)["input_ids"]
    assert forced.token_ids[:2] == gen.token_ids[:2]
    assert forced.token_ids[2 : 2 + len(ids)] == ids
    assert forced.forced == tuple(range(2, 2 + len(ids)))
    assert forced.n_steps == max(5, 2 + len(ids))
    first = gen.fork(0, steer=vec(model, norm=30.0), layer=1)
    assert first.n_steps == 5 and first.fork_step == 0
    last = gen.fork(5, max_new_tokens=2)
    assert last.token_ids[:5] == gen.token_ids and last.n_steps == 7
    tensors, logits = single_forward(model, last.capture.token_ids.tolist(), what=None)
    assert max_diff(last.capture, tensors, logits) <= 1e-4
    with pytest.raises(ValueError, match=r"fork step must be an int in \[0, 5\]"):
        gen.fork(6)
    with pytest.raises(ValueError, match="text must be a non-empty string"):
        gen.fork(1, text="")


def test_top_k(llama):
    model, tok = llama
    gen = generate(model, tok, PROMPT, max_new_tokens=3, stop_at_eos=False)
    for s in range(3):
        top = gen.top(5, step=s)
        assert [t["rank"] for t in top] == list(range(5))
        assert top[0]["id"] == gen.token_ids[s] and top[0]["chosen"]  # greedy takes the top
        assert top[0]["label"] == tok.decode([gen.token_ids[s]])
        assert sum(t["prob"] for t in top) <= 1 + 1e-6
        assert all(a["prob"] >= b["prob"] for a, b in zip(top, top[1:], strict=False))
    assert float(gen.kl(gen).abs().max()) == 0.0
    with pytest.raises(IndexError, match="this generation has 3 steps"):
        gen.top(5, step=3)


def test_no_hooks_left(llama):
    model, tok = llama
    before = n_hooks(model)
    impl = model.config._attn_implementation
    generate(model, tok, PROMPT, max_new_tokens=3, steer=vec(model), layer=1)
    assert n_hooks(model) == before and model.config._attn_implementation == impl

    def boom(x, pos):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        generate(model, tok, PROMPT, max_new_tokens=3, steer=boom, layer=1)
    assert n_hooks(model) == before and model.config._attn_implementation == impl

    calls = []

    def interrupt(x, pos):
        calls.append(1)
        if len(calls) == 3:  # mid-generation, with the KV cache in use
            raise KeyboardInterrupt
        return None

    with pytest.raises(KeyboardInterrupt):
        generate(model, tok, PROMPT, max_new_tokens=5, steer=interrupt, layer=0)
    assert n_hooks(model) == before and model.config._attn_implementation == impl
    gen = generate(model, tok, PROMPT, max_new_tokens=3)
    with pytest.raises(RuntimeError, match="hook failed"):
        gen.fork(1, steer=boom, layer=1)
    assert n_hooks(model) == before and model.training is False
    with pytest.raises(ValueError, match="must return a tensor"):
        generate(model, tok, PROMPT, max_new_tokens=2, steer=lambda x, p: x[:, :1], layer=0)
    assert n_hooks(model) == before


def test_bad_input(llama):
    model, tok = llama
    v = vec(model)
    with pytest.raises(ValueError, match=r"layer=2 is out of range; the model has 2 layers"):
        generate(model, tok, PROMPT, steer=v, layer=2)
    with pytest.raises(ValueError, match=r"layer=5 is out of range"):
        steering_vector(model, tok, ["a"], ["b"], layer=5)
    with pytest.raises(ValueError, match=r"size d_model=32; got shape \(31,\)"):
        generate(model, tok, PROMPT, steer=torch.zeros(31), layer=0)
    with pytest.raises(ValueError, match=r"size d_model=32; got shape \(2, 32\)"):
        generate(model, tok, PROMPT, steer={0: torch.zeros(2, 32)})
    with pytest.raises(
        ValueError,
        match=r"beyond the model's context \(max_position_embeddings=128",
    ):
        generate(model, tok, PROMPT, max_new_tokens=200)
    with pytest.raises(ValueError, match="steer= needs layer="):
        generate(model, tok, PROMPT, steer=v)
    with pytest.raises(ValueError, match="without steer="):
        generate(model, tok, PROMPT, layer=1)
    with pytest.raises(ValueError, match="positions must be 'all', 'new'"):
        generate(model, tok, PROMPT, steer=v, layer=0, positions="prompt")
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(model, tok, PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        generate(model, tok, PROMPT, steer=torch.full((32,), float("nan")), layer=0)
    with pytest.raises(ValueError, match="pos=9 is outside the prompt"):
        steering_vector(model, tok, ["a b"], ["c"], layer=0, pos=9)


def test_steering_vector_and_comparison_direction(llama):
    model, tok = llama
    pos_p = ["I love cats", "the cat sat", "a cat purrs"]
    neg_p = ["I love dogs", "the dog sat"]
    v = steering_vector(model, tok, pos_p, neg_p, layer=1)
    assert isinstance(v, torch.Tensor) and v.shape == (32,)
    assert v.layer == 1 and (v.n_positive, v.n_negative) == (3, 2)
    assert abs(v.diff_norm - float(v.norm())) < 1e-5 and v.resid_norm > 0
    assert "layer=1 resid_pre" in repr(v) and type(v + 1) is torch.Tensor
    cmp = cb.compare(model, tok, {"cat": pos_p, "dog": neg_p}, progress=False)
    d = cmp.direction("cat", "dog", 1)
    # the same mean difference, computed from batched running statistics
    assert torch.allclose(d, v, atol=1e-4) and d.layer == 1
    gen = generate(model, tok, PROMPT, max_new_tokens=2, steer=d)  # the vector's own layer
    assert 1 in gen.steering.hooks
    with pytest.raises(IndexError, match="was not compared"):
        cmp.direction("cat", "dog", 7)
    no_resid = cb.compare(
        model, tok, {"cat": pos_p, "dog": neg_p}, stats=["head_write"], progress=False
    )
    with pytest.raises(ValueError, match="no residual-stream statistics"):
        no_resid.direction("cat", "dog", 1)


@pytest.mark.parametrize("layer", [0, 1])
def test_attribution_of_a_step_sums_to_the_logit(llama, layer):
    model, tok = llama
    plain = generate(model, tok, PROMPT, max_new_tokens=3, stop_at_eos=False)
    steered = generate(
        model, tok, PROMPT, max_new_tokens=3, stop_at_eos=False, steer=vec(model), layer=layer
    )
    for gen in (plain, steered):
        for s in range(3):
            a = gen.attribution(s)
            assert a.target == gen.token_ids[s] and a.pos == gen.position(s)
            assert abs(a.model_value - float(gen.logits(s)[gen.token_ids[s]])) < 1e-5
            scale = max(1.0, float(a.values.abs().sum()))
            assert abs(a.total - a.model_value) <= 1e-5 * scale, (a.total, a.model_value)
    assert "steer" not in plain.attribution(0).labels
    assert abs(steered.attribution(0)["steer"]) > 0


def test_step_lens_last_layer_is_the_model(llama):
    model, tok = llama
    gen = generate(model, tok, PROMPT, max_new_tokens=4, stop_at_eos=False)
    lens = gen.step_lens(k=2)
    assert lens["top_ids"].shape == (4, 2, 2)
    want = torch.stack([gen.logits(s).softmax(-1)[gen.token_ids[s]] for s in range(4)])
    assert torch.allclose(lens["chosen_probs"][:, -1], want, atol=1e-5)
    assert lens["top_ids"][:, -1, 0].tolist() == gen.token_ids  # greedy: the last layer's top
