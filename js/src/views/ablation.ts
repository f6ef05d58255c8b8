// Ablation view: ablations (rows, by mean effect) × prompts (columns); each cell the metric's
// change from the unablated run (diverging, 0 = unchanged). Hover names the cell; clicking a
// row selects its first component (layer, head or neuron) on the link.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { cssColor } from "../colormaps";
import { el } from "../dom";
import { cellAt, paintMatrix } from "../heatmap";
import { resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import type { Encoded, Selection } from "../types";
import { divergingFor, fmt, symmetricMax } from "./attribution";

interface AblationState {
  labels: string[];
  prompts: string[];
  how: string;
  metric: string;
  notes: string[];
  selections: Partial<Selection>[];
  _values: Encoded;
  _baseline: Encoded;
  theme: string;
  link: string;
}

/** Row order: largest |mean effect| first. */
export function rowOrder(effects: ArrayLike<number>, rows: number, cols: number): number[] {
  const mean = (r: number) => {
    let s = 0;
    for (let c = 0; c < cols; c++) s += effects[r * cols + c];
    return s / Math.max(cols, 1);
  };
  return Array.from({ length: rows }, (_, r) => r).sort((a, b) => Math.abs(mean(b)) - Math.abs(mean(a)));
}

export async function render(props: RenderProps<AblationState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const labels = model.get("labels");
  const prompts = model.get("prompts");
  const sels = model.get("selections");
  const values = decode(model.get("_values")).data;
  const baseline = decode(model.get("_baseline")).data;
  const rows = labels.length;
  const cols = prompts.length;
  const effects = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) effects[r * cols + c] = values[r * cols + c] - baseline[c];
  const order = rowOrder(effects, rows, cols);
  const sorted = new Float32Array(rows * cols);
  order.forEach((r, i) => sorted.set(effects.subarray(r * cols, (r + 1) * cols), i * cols));
  const range = symmetricMax(sorted);
  const cellW = Math.max(6, Math.min(48, Math.floor(480 / Math.max(cols, 1))));
  const cellH = Math.max(6, Math.min(20, Math.floor(560 / Math.max(rows, 1))));

  const root = el("div", "cb-root cb-abl", host);
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Ablations";
  el("span", "cb-status", header).textContent = `how=${model.get("how")} · ${model.get("metric")} · ${rows} ablations × ${cols} prompts`;
  const body = el("div", "cb-body", root);
  const figure = el("div", "cb-figure cb-abl-figure", body);
  const grid = el("div", "cb-abl-grid", figure);
  const names = el("div", "cb-abl-names", grid);
  const rowEls: HTMLElement[] = [];
  order.forEach((r) => {
    const row = el("div", "cb-abl-name cb-clickable", names);
    row.style.height = `${cellH}px`;
    row.style.lineHeight = `${cellH}px`;
    row.textContent = labels[r];
    row.addEventListener("click", () => choose(r), { signal });
    rowEls.push(row);
  });
  const heat = el("canvas", "cb-abl-heat", grid);
  heat.style.width = `${cols * cellW}px`;
  heat.style.height = `${rows * cellH}px`;
  heat.setAttribute("role", "img");
  const tip = el("div", "cb-tip cb-abl-tip", figure);
  tip.hidden = true;
  const side = el("div", "cb-side cb-abl-side", body);
  const readout = el("div", "cb-abl-readout", side);
  readout.textContent = "Hover a cell; click a row to select its component.";
  el("div", "cb-patch-h", side).textContent = "Mean effect over prompts";
  const list = el("div", "cb-patch-list", side);
  el("div", "cb-patch-h", side).textContent = "Conventions";
  const notesBox = el("ul", "cb-patch-notes", side);
  for (const t of model.get("notes")) el("li", "", notesBox).textContent = t;

  const meanOf = (r: number) => {
    let s = 0;
    for (let c = 0; c < cols; c++) s += effects[r * cols + c];
    return s / Math.max(cols, 1);
  };
  const choose = (r: number) => {
    root.dataset.selected = labels[r];
    rowEls.forEach((e, i) => e.classList.toggle("cb-abl-sel", order[i] === r));
    const s = sels[r];
    if (s && s.layer !== undefined) select(link, s);
  };
  const draw = () => {
    const lut = divergingFor(isDark(root));
    const unit = (v: number) => 0.5 + (0.5 * v) / range;
    paintMatrix(heat, rows, cols, sorted, lut, unit);
    list.replaceChildren();
    for (const r of order.slice(0, 12)) {
      const m = meanOf(r);
      const row = el("div", "cb-patch-row cb-clickable", list);
      el("span", "cb-patch-swatch", row).style.background = cssColor(lut, unit(m));
      el("span", "cb-patch-label", row).textContent = labels[r];
      el("span", "cb-patch-value", row).textContent = fmt(m);
      row.addEventListener("click", () => choose(r), { signal });
    }
  };
  heat.addEventListener("pointermove", (ev) => {
    const at = cellAt(heat, ev);
    if (!at) {
      tip.hidden = true;
      return;
    }
    const r = order[at.row];
    const v = values[r * cols + at.col];
    const text = `${labels[r]} on prompt ${at.col}: ${fmt(v - baseline[at.col])} (${fmt(baseline[at.col])} → ${fmt(v)})`;
    tip.hidden = false;
    tip.textContent = text;
    const fr = figure.getBoundingClientRect();
    tip.style.left = `${ev.clientX - fr.left + 12}px`;
    tip.style.top = `${ev.clientY - fr.top + 12}px`;
    root.dataset.hover = text;
    readout.textContent = `${text}\n${prompts[at.col]}`;
  }, { signal });
  heat.addEventListener("pointerleave", () => {
    tip.hidden = true;
  }, { signal });
  heat.addEventListener("click", (ev) => {
    const at = cellAt(heat, ev);
    if (at) choose(order[at.row]);
  }, { signal });
  const offTheme = followTheme(model as AnyModel, root, draw);
  draw();
  root.dataset.ready = "true";
  return () => {
    abort.abort();
    offTheme();
    root.remove();
  };
}
