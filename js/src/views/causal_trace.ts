// Causal-trace view: Meng et al. (2022)'s three heatmaps — restoring hidden states, MLP
// outputs, attention outputs — tokens down (subject marked *), layers across; colour = the
// answer's probability gained. Hover shows the value; click selects layer + token on the link.
import type { RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import type { Lut } from "../colormaps";
import { el } from "../dom";
import { cellAt, paintMatrix } from "../heatmap";
import { onSelection, resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import type { Encoded } from "../types";
import { fmt } from "./attribution";
import { showToken } from "./patching";

interface CausalTraceState {
  kinds: string[];
  tokens: string[];
  subject: number[];
  n_layers: number;
  answer: string;
  clean_value: number;
  corrupted_value: number;
  windows: number[];
  description: string;
  notes: string[];
  _values: Encoded;
  theme: string;
  link: string;
}

const TITLES: Record<string, string> = {
  hidden: "Restoring the hidden state (residual stream)",
  mlp: "Restoring MLP outputs",
  attn: "Restoring attention outputs",
};
// The paper's hues: purple, green, red.
const HUES: Record<string, [number, number, number]> = {
  hidden: [84, 39, 143],
  mlp: [0, 109, 44],
  attn: [165, 15, 21],
};

/** A 256-entry ramp from the background colour to `hue`. */
export function ramp(hue: [number, number, number], dark: boolean): Lut {
  const bg = dark ? [22, 27, 34] : [255, 255, 255];
  const top = dark ? hue.map((c) => Math.min(255, c + 110)) : hue;
  const lut = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    for (let c = 0; c < 3; c++) lut[4 * i + c] = Math.round(bg[c] + (top[c] - bg[c]) * t);
    lut[4 * i + 3] = 255;
  }
  return lut;
}

/** The largest finite value of a panel (at least a tiny positive number). */
export function panelMax(values: ArrayLike<number>, start: number, n: number): number {
  let m = 1e-9;
  for (let i = start; i < start + n; i++) if (Number.isFinite(values[i])) m = Math.max(m, values[i]);
  return m;
}

export async function render(props: RenderProps<CausalTraceState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const values = decode(model.get("_values")).data; // [K, L, T]
  const kinds = model.get("kinds");
  const tokens = model.get("tokens");
  const subject = new Set(model.get("subject"));
  const L = model.get("n_layers");
  const T = tokens.length;
  const cellH = 18;
  const cellW = Math.max(5, Math.min(16, Math.floor(300 / Math.max(L, 1))));

  const root = el("div", "cb-root cb-trace", host);
  root.tabIndex = 0;
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Causal trace";
  el("span", "cb-patch-desc", header).textContent = `p(${JSON.stringify(model.get("answer"))}) · ${model.get("description")} · windows ${model.get("windows").join(" / ")}`;
  el("span", "cb-status", header).textContent = `clean ${fmt(model.get("clean_value"))} · corrupted ${fmt(model.get("corrupted_value"))}`;
  const panels = el("div", "cb-trace-panels", root);
  const readout = el("div", "cb-patch-readout cb-trace-readout", root);
  readout.textContent = "Hover a cell for the probability its restoration brings back; click to select its layer and token.";
  const notesBox = el("ul", "cb-patch-notes", root);
  for (const n of model.get("notes")) el("li", "", notesBox).textContent = n;

  const canvases: HTMLCanvasElement[] = [];
  const markers: HTMLElement[] = [];
  const maxes = kinds.map((_, k) => panelMax(values, k * L * T, L * T));
  kinds.forEach((kind, k) => {
    const panel = el("div", "cb-trace-panel", panels);
    panel.dataset.kind = kind;
    el("div", "cb-trace-title", panel).textContent = TITLES[kind] ?? kind;
    const grid = el("div", "cb-patch-grid", panel);
    grid.style.gridTemplateColumns = `auto ${L * cellW}px`;
    const rowAxis = el("div", "cb-patch-raxis", grid);
    for (let p = 0; p < T; p++) {
      const row = el("div", "cb-patch-rlabel", rowAxis);
      row.style.height = `${cellH}px`;
      row.style.lineHeight = `${cellH}px`;
      el("span", "cb-patch-tok", row).textContent = showToken(tokens[p]) + (subject.has(p) ? "*" : "");
      if (subject.has(p)) row.classList.add("cb-trace-subject");
    }
    const wrap = el("div", "cb-patch-heatwrap", grid);
    const canvas = el("canvas", "cb-patch-heat cb-trace-heat", wrap);
    canvas.style.width = `${L * cellW}px`;
    canvas.style.height = `${T * cellH}px`;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `${kind} restoration, ${T} tokens × ${L} layers`);
    const marker = el("div", "cb-patch-marker", wrap);
    marker.hidden = true;
    el("div", "", grid);
    const axis = el("div", "cb-patch-caxis", grid);
    axis.style.width = `${L * cellW}px`;
    const every = Math.max(1, Math.ceil(24 / cellW));
    for (let l = 0; l < L; l += every) {
      const s = el("span", "", axis);
      s.style.left = `${l * cellW}px`;
      s.textContent = String(l);
    }
    el("div", "cb-trace-axis-label", panel).textContent = `layer · max ${fmt(maxes[k])}`;
    canvases.push(canvas);
    markers.push(marker);

    canvas.addEventListener(
      "pointermove",
      (ev) => {
        const cell = cellAt(canvas, ev);
        if (!cell) return;
        const v = values[(k * L + cell.col) * T + cell.row];
        readout.textContent = `${kind} L${cell.col} · token ${cell.row} ${JSON.stringify(tokens[cell.row])}${subject.has(cell.row) ? " (subject)" : ""}: p gained ${fmt(v)}`;
      },
      { signal },
    );
    canvas.addEventListener(
      "click",
      (ev) => {
        const cell = cellAt(canvas, ev);
        if (cell) select(link, { layer: cell.col, token: cell.row });
      },
      { signal },
    );
  });

  const draw = () => {
    const dark = isDark(root);
    kinds.forEach((kind, k) => {
      const grid = new Float32Array(T * L); // rows = tokens, cols = layers
      for (let l = 0; l < L; l++) for (let p = 0; p < T; p++) grid[p * L + l] = values[(k * L + l) * T + p];
      const top = maxes[k];
      paintMatrix(canvases[k], T, L, grid, ramp(HUES[kind] ?? [60, 60, 60], dark), (v) => Math.max(0, v) / top);
    });
  };
  const drawSelection = () => {
    const l = link.get("layer");
    const t = link.get("token");
    const on = l !== null && l !== undefined && t !== null && t !== undefined && l < L && t < T;
    markers.forEach((m) => {
      m.hidden = !on;
      if (!on) return;
      m.style.left = `${(l as number) * cellW}px`;
      m.style.top = `${(t as number) * cellH}px`;
      m.style.width = `${cellW}px`;
      m.style.height = `${cellH}px`;
    });
    if (on) root.dataset.selected = `L${l} token ${t}`;
    else delete root.dataset.selected;
  };
  draw();
  drawSelection();
  const offTheme = followTheme(model, root, draw);
  const offSel = onSelection(link, ["layer", "token"], drawSelection);
  root.dataset.ready = "true";
  return () => {
    abort.abort();
    offTheme();
    offSel();
  };
}
