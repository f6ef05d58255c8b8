// Composition view: Q-, K- or V-composition scores of every (writer head, reader head) pair as
// a heads × heads matrix (writer rows, reader columns), pairs below a threshold greyed out.
// Hover names the pair; click selects the reader head on the link and shows both heads in the
// side panel, which can select either and explain the pair on a captured prompt.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { cssColor, sequential } from "../colormaps";
import { el } from "../dom";
import { Fetcher } from "../fetch";
import { cellAt, paintMatrix } from "../heatmap";
import { onSelection, resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import type { Encoded } from "../types";
import { fmt } from "./attribution";

type Kind = "Q" | "K" | "V";

interface CompositionState {
  kind: Kind;
  threshold: number;
  pair: number[];
  n_layers: number;
  n_heads: number;
  n_kv_heads: number;
  baseline: Record<Kind, number>;
  baseline_std: Record<Kind, number>;
  notes: string[];
  explainable: boolean;
  prompt_tokens: string[];
  _scores: Record<Kind, Encoded>;
  theme: string;
  link: string;
}

interface Term {
  label: string;
  value: number;
}

/** Head label of flat index `i` (layer-major). */
export function headLabel(i: number, nHeads: number): string {
  return `L${Math.floor(i / nHeads)}H${i % nHeads}`;
}

/** Values to paint: NaN (grey) where the writer is not before the reader or below threshold. */
export function masked(values: ArrayLike<number>, n: number, nHeads: number, threshold: number): Float32Array {
  const out = new Float32Array(n * n);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) {
      const v = values[r * n + c];
      const valid = Math.floor(r / nHeads) < Math.floor(c / nHeads);
      out[r * n + c] = valid && v >= threshold ? v : Number.NaN;
    }
  }
  return out;
}

/** The `k` valid pairs with the highest scores above `threshold`: [row, col] flat indices. */
export function topPairs(values: ArrayLike<number>, n: number, nHeads: number, threshold: number, k: number): [number, number][] {
  const out: [number, number][] = [];
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) {
      if (Math.floor(r / nHeads) < Math.floor(c / nHeads) && values[r * n + c] >= threshold) out.push([r, c]);
    }
  }
  out.sort((a, b) => values[b[0] * n + b[1]] - values[a[0] * n + a[1]]);
  return out.slice(0, k);
}

export async function render(props: RenderProps<CompositionState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const H = model.get("n_heads");
  const n = model.get("n_layers") * H;
  const scores: Record<string, Float32Array> = {};
  for (const k of ["Q", "K", "V"]) scores[k] = decode(model.get("_scores")[k as Kind]).data;
  let kind: Kind = model.get("kind");
  let max = 0;
  const refreshMax = () => {
    max = 0;
    for (const v of scores[kind]) if (Number.isFinite(v)) max = Math.max(max, v);
    max = max || 1;
  };
  refreshMax();
  const cell = Math.max(2, Math.min(24, Math.floor(540 / Math.max(n, 1))));

  const root = el("div", "cb-root cb-comp", host);
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Composition scores";
  const kindSel = el("select", "cb-select cb-comp-kind", header);
  kindSel.setAttribute("aria-label", "composition kind");
  for (const k of ["Q", "K", "V"]) kindSel.add(new Option(`${k}-composition`, k));
  kindSel.value = kind;
  const thLabel = el("label", "cb-comp-threshold", header);
  el("span", "", thLabel).textContent = "threshold ";
  const slider = el("input", "cb-comp-slider", thLabel);
  slider.type = "range";
  slider.min = "0";
  slider.step = "0.001";
  const thValue = el("span", "cb-comp-thvalue", thLabel);
  const status = el("span", "cb-status", header);

  const body = el("div", "cb-body", root);
  const figure = el("div", "cb-figure cb-comp-figure", body);
  el("div", "cb-comp-axis", figure).textContent = "rows: writer head (its OV) · columns: reader head (later layer)";
  const heat = el("canvas", "cb-comp-heat", figure);
  heat.style.width = `${n * cell}px`;
  heat.style.height = `${n * cell}px`;
  heat.style.imageRendering = "pixelated";
  heat.setAttribute("role", "img");
  const marker = el("div", "cb-comp-marker", figure);
  marker.hidden = true;
  const tip = el("div", "cb-tip cb-comp-tip", figure);
  tip.hidden = true;

  const side = el("div", "cb-side cb-comp-side", body);
  const readout = el("div", "cb-comp-readout", side);
  readout.textContent = "Hover a pair for its score; click to select it.";
  const pairBox = el("div", "cb-comp-pair", side);
  el("div", "cb-patch-h", side).textContent = "Strongest pairs above the threshold";
  const topBox = el("div", "cb-patch-list", side);
  el("div", "cb-patch-h", side).textContent = "Conventions";
  const notesBox = el("ul", "cb-patch-notes", side);
  for (const t of model.get("notes")) el("li", "", notesBox).textContent = t;

  const threshold = () => model.get("threshold");
  const baseText = () => {
    const b = model.get("baseline")[kind];
    const s = model.get("baseline_std")[kind];
    return `random baseline ${fmt(b)} ± ${fmt(s)}`;
  };
  const pairText = (r: number, c: number) => `${headLabel(r, H)} → ${headLabel(c, H)} (${kind})`;

  const draw = () => {
    const lut = sequential(isDark(root));
    const grey: [number, number, number] = isDark(root) ? [40, 44, 52] : [236, 236, 236];
    const vals = masked(scores[kind], n, H, threshold());
    paintMatrix(heat, n, n, vals, lut, (v) => v / max, grey);
    slider.max = String(max);
    slider.value = String(threshold());
    thValue.textContent = fmt(threshold());
    const shown = topPairs(scores[kind], n, H, threshold(), Number.POSITIVE_INFINITY).length;
    status.textContent = `${shown} pairs ≥ ${fmt(threshold())} · ${baseText()}`;
    root.dataset.kind = kind;
    root.dataset.shown = String(shown);
    topBox.replaceChildren();
    for (const [r, c] of topPairs(scores[kind], n, H, threshold(), 12)) {
      const v = scores[kind][r * n + c];
      const row = el("div", "cb-patch-row cb-clickable", topBox);
      el("span", "cb-patch-swatch", row).style.background = cssColor(lut, v / max);
      el("span", "cb-patch-label", row).textContent = pairText(r, c);
      el("span", "cb-patch-value", row).textContent = fmt(v);
      row.addEventListener("click", () => choose(r, c), { signal });
    }
    drawPair();
  };

  const drawPair = () => {
    const p = model.get("pair");
    pairBox.replaceChildren();
    marker.hidden = p.length !== 4;
    if (p.length !== 4) return;
    const r = p[0] * H + p[1];
    const c = p[2] * H + p[3];
    marker.style.left = `${heat.offsetLeft + c * cell}px`;
    marker.style.top = `${heat.offsetTop + r * cell}px`;
    marker.style.width = `${Math.max(cell, 3)}px`;
    marker.style.height = `${Math.max(cell, 3)}px`;
    root.dataset.selected = pairText(r, c);
    const v = scores[kind][r * n + c];
    el("div", "cb-comp-pairtitle", pairBox).textContent = `${pairText(r, c)}: ${fmt(v)} (${baseText()})`;
    const buttons = el("div", "cb-comp-buttons", pairBox);
    for (const [label, l, h] of [["select writer", p[0], p[1]], ["select reader", p[2], p[3]]] as [string, number, number][]) {
      const b = el("button", "cb-button", buttons);
      b.textContent = `${label} L${l}H${h}`;
      b.addEventListener("click", () => select(link, { layer: l, head: h }), { signal });
    }
    if (model.get("explainable")) {
      const b = el("button", "cb-button cb-comp-explain", buttons);
      b.textContent = "explain on the prompt";
      const out = el("div", "cb-comp-explanation", pairBox);
      b.addEventListener("click", () => {
        out.textContent = "…";
        fetcher
          .get({ kind: "fetch-pair", la: p[0], ha: p[1], lb: p[2], hb: p[3], which: kind })
          .then(({ reply }) => showExplanation(out, reply as unknown as Record<string, unknown>))
          .catch((err: Error) => {
            out.textContent = String(err.message ?? err);
          });
      }, { signal });
    } else {
      el("div", "cb-comp-hint", pairBox).textContent = "Build the view with cap= to explain this pair on a prompt (cb.explain_attention).";
    }
  };

  const showExplanation = (out: HTMLElement, r: Record<string, unknown>) => {
    out.replaceChildren();
    const toks = model.get("prompt_tokens");
    const q = r.query as number;
    const k = r.key as number;
    const [la, ha] = r.writer as number[];
    const [lb, hb] = r.reader as number[];
    el("div", "", out).textContent = `L${lb}H${hb} at query ${q} ${JSON.stringify(toks[q] ?? "")} attends most (after the first token) to key ${k} ${JSON.stringify(toks[k] ?? "")} (weight ${fmt(r.weight as number)}); score ${fmt(r.score as number)}.`;
    el("div", "", out).textContent = `L${la}H${ha}'s share: ${fmt(r.writer_query as number)} through the query, ${fmt(r.writer_key as number)} through the key.`;
    const list = el("ul", "cb-patch-notes", out);
    for (const t of r.terms as Term[]) el("li", "", list).textContent = `${t.label}: ${fmt(t.value)}`;
  };

  const choose = (r: number, c: number) => {
    const la = Math.floor(r / H);
    const lb = Math.floor(c / H);
    if (la >= lb) return;
    model.set("pair", [la, r % H, lb, c % H]);
    model.save_changes();
    select(link, { layer: lb, head: c % H });
    drawPair();
  };

  heat.addEventListener("pointermove", (ev) => {
    const at = cellAt(heat, ev);
    if (!at) {
      tip.hidden = true;
      return;
    }
    const valid = Math.floor(at.row / H) < Math.floor(at.col / H);
    const v = scores[kind][at.row * n + at.col];
    tip.hidden = false;
    tip.textContent = valid ? `${pairText(at.row, at.col)}: ${fmt(v)}` : `${headLabel(at.row, H)} cannot write into ${headLabel(at.col, H)} (not a later layer)`;
    const fr = figure.getBoundingClientRect();
    tip.style.left = `${ev.clientX - fr.left + 12}px`;
    tip.style.top = `${ev.clientY - fr.top + 12}px`;
    root.dataset.hover = tip.textContent;
    readout.textContent = tip.textContent;
  }, { signal });
  heat.addEventListener("pointerleave", () => {
    tip.hidden = true;
  }, { signal });
  heat.addEventListener("click", (ev) => {
    const at = cellAt(heat, ev);
    if (at) choose(at.row, at.col);
  }, { signal });
  kindSel.addEventListener("change", () => {
    kind = kindSel.value as Kind;
    model.set("kind", kind);
    model.save_changes();
    refreshMax();
    draw();
  }, { signal });
  slider.addEventListener("input", () => {
    model.set("threshold", Number(slider.value));
    model.save_changes();
    draw();
  }, { signal });
  const onThreshold = () => draw();
  model.on("change:threshold", onThreshold);
  const onKind = () => {
    kind = model.get("kind");
    kindSel.value = kind;
    refreshMax();
    draw();
  };
  model.on("change:kind", onKind);
  const onPair = () => drawPair();
  model.on("change:pair", onPair);
  const offSel = onSelection(link, ["layer", "head"], () => {
    const l = link.get("layer");
    const h = link.get("head");
    root.dataset.linked = l === null || h === null ? "" : `L${l}H${h}`;
  });
  const offTheme = followTheme(model as AnyModel, root, draw);
  draw();
  root.dataset.ready = "true";

  return () => {
    abort.abort();
    model.off("change:threshold", onThreshold);
    model.off("change:kind", onKind);
    model.off("change:pair", onPair);
    offSel();
    offTheme();
    fetcher.dispose();
    root.remove();
  };
}
