"""Recording overhead of comgra next to circuitboard's ``TrainingRecorder``, same model, same loop.

comgra (PyPI, MIT, https://github.com/FlorianDietz/comgra) is the library whose idea of KPIs
per tensor and per "type of execution" ``cb.TrainingRecorder`` follows. It must never enter
the project's environment, so this script runs in a throwaway venv that has comgra (and its
GUI dependencies) but reads torch and circuitboard from the project::

    /root/.pyenv/versions/3.11.7/bin/python -m venv /tmp/comgra-venv
    /tmp/comgra-venv/bin/pip install comgra dash dash-svg "dash-bootstrap-components>=1.5.0" \\
        msgpack pandas plotly        # not torch: the project's torch is read through a .pth
    echo "$PWD/.venv/lib/python3.11/site-packages" > \\
        /tmp/comgra-venv/lib/python3.11/site-packages/zz_project_torch.pth
    PYTHONPATH=$PWD/python /tmp/comgra-venv/bin/python benchmarks/bench_training_comgra.py

Blocks of ``--block`` steps run in turn plain, circuitboard, comgra (A B C A B C ... A), each
recorder recording every 10th step: circuitboard with the settings of ``bench_training.py``
but no probes and no categories (comgra has neither); comgra with the same six hook points
registered from forward hooks (``recording_type="kpis"``: mean, mean |x|, std, max |x|;
``--comgra-recording neuron`` for comgra's default, every neuron of the kept rows), the
model tracked (parameters), gradients recorded after ``backward()``, 4 batch rows kept, and
its SVD statistics off (its cheapest setting). Each block is set against the mean of the
plain blocks either side of it; the medians of those ratios are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

import torch

from circuitboard.training import AttentionOnlyTransformer, TrainingRecorder, repeated_sequences


def main() -> None:
    import comgra
    from comgra.objects import DecisionMakerForRecordingsFrequencyPerType
    from comgra.recorder import ComgraRecorder

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--comgra-recording",
        choices=("kpis", "neuron"),
        default="kpis",
        help="comgra's recording_type for activations: KPIs only (like circuitboard) or its "
        "default, every neuron's value of the kept batch rows",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AttentionOnlyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    root = tempfile.mkdtemp()
    ours = TrainingRecorder(model, every=args.every, path=os.path.join(root, "cb.sqlite"))
    sites = [s.name for s in ours.sites]
    comgra.my_recorder = ComgraRecorder(
        comgra_root_path=root,
        group="bench",
        trial_id="attn-only",
        decision_maker_for_recordings=DecisionMakerForRecordingsFrequencyPerType(
            min_training_steps_difference=args.every
        ),
        max_num_batch_size_to_record=4,
        calculate_svd_and_other_expensive_operations_of_parameters=False,
    )
    comgra.my_recorder.track_module("model", model)
    named = dict(model.named_modules())
    use_comgra = {"on": False}
    kind_of_recording = args.comgra_recording

    def register(name):
        # comgra 0.11.5 takes [batch, features] tensors (a [batch, pos, d] one recurses
        # without end in its neuron naming): register the flattened view and let the forward
        # go on from it, so its gradient is the activation's gradient
        def hook(mod, args_, out):
            if use_comgra["on"]:
                flat = out.reshape(out.shape[0], -1)
                comgra.my_recorder.register_tensor(name, flat, recording_type=kind_of_recording)
                return flat.view(out.shape)
            return None

        return hook

    for name in sites:  # the same tensors circuitboard records
        named[name].register_forward_hook(register(name))

    def block(kind: str, start: int) -> float:
        t0 = time.perf_counter()
        for step in range(start, start + args.block):
            ids, _ = repeated_sequences(32, generator=gen)
            if kind == "comgra":
                use_comgra["on"] = True
                comgra.my_recorder.start_batch(step, 32, type_of_execution="train")
                comgra.my_recorder.start_iteration()
                comgra.my_recorder.register_tensor(
                    "inputs", ids.float(), is_input=True, recording_type=kind_of_recording
                )
            ctx = ours.step(step) if kind == "circuitboard" else contextlib.nullcontext()
            with ctx:
                logits = model(ids)
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1)
                )
                if kind == "circuitboard":
                    ours.loss(loss)
                if kind == "comgra":
                    comgra.my_recorder.register_tensor("loss", loss, is_loss=True)
                    comgra.my_recorder.record_kpi_in_graph("loss", "", loss)
                loss.backward()
            if kind == "comgra":
                comgra.my_recorder.record_current_gradients("gradients")
                comgra.my_recorder.finish_iteration()
                comgra.my_recorder.finish_batch()
                use_comgra["on"] = False
            opt.step()
            opt.zero_grad()
        return (time.perf_counter() - t0) / args.block

    loads = [os.getloadavg()[0]]
    block("plain", 0)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "circuitboard": [], "comgra": []}
    step = args.block
    for _ in range(args.rounds):
        for kind in ("plain", "circuitboard", "comgra"):
            times[kind].append(block(kind, step))
            step += args.block
            loads.append(os.getloadavg()[0])
    times["plain"].append(block("plain", step))
    ours.close()
    comgra.my_recorder.finalize()
    plain = times["plain"]
    print(
        f"| recorder (every {args.every}) | ms / step (median block) "
        "| overhead (median paired ratio) |"
    )
    print("|---|---|---|")
    print(f"| none | {statistics.median(plain) * 1e3:.1f} | — |")
    for kind in ("circuitboard", "comgra"):
        ratios = [t / ((plain[i] + plain[i + 1]) / 2) for i, t in enumerate(times[kind])]
        print(
            f"| {kind} | {statistics.median(times[kind]) * 1e3:.1f} "
            f"| {100 * (statistics.median(ratios) - 1):+.1f} % |"
        )
    print(
        f"\ncomgra {getattr(comgra, '__version__', '0.11.5')}, torch {torch.__version__}, "
        f"recording_type={kind_of_recording!r}; "
        f"torch threads {torch.get_num_threads()}; {args.rounds} rounds of {args.block}-step "
        f"blocks; load average (1 min) {min(loads):.1f}-{max(loads):.1f}, median "
        f"{statistics.median(loads):.1f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


if __name__ == "__main__":
    main()
