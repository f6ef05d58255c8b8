// Training view: a run over its steps. Loss curves per category (a second trial dashed), a
// step scrubber, activations | gradients (or parameters | gradients) as steps × tensors
// heatmaps of one KPI for a category or a difference of two, the probe's head scores over
// probe steps; clicking a (step, head) cell shows its attention pattern and selects the head
// on the link so linked attention views follow.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode, uint8View } from "../codec";
import { ColorBar } from "../colorbar";
import { cssColor, diverging, type Lut, sequential, textOn } from "../colormaps";
import { el } from "../dom";
import { figureCanvas, paintedAt, recordCanvas } from "../figure";
import { type FlowLayout, GRAPH_FONT, layoutFlow, paintFlow } from "./training_graph";
import { cellAt, paintCodes, paintMatrix } from "../heatmap";
import { resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import type { Encoded } from "../types";

interface TrainingState {
  trial: string;
  steps: number[];
  categories: string[];
  stats: string[];
  names: string[];
  param_names: string[];
  stat: string;
  category: string;
  minus: string;
  kind: string;
  step_index: number;
  probe_steps: number[];
  score_names: string[];
  score: string;
  probe_tokens: string[];
  picked: { p?: number; layer?: number; head?: number };
  trial_b: string;
  correlations: { label: string; r: number; lag: number }[];
  highlight: string;
  navigator: string; // "list" | "graph"
  graph_nodes: number[]; // indices into names (empty: no data flow recorded)
  graph_edges: [number, number][]; // [source, target] indices into names
  _kpis: Record<string, Encoded>;
  _loss: Encoded;
  _kpis_b: Record<string, Encoded>;
  _loss_b: Encoded | Record<string, never>;
  _steps_b: number[];
  _scores: Encoded | Record<string, never>;
  _patterns: Encoded | Record<string, never>;
  theme: string;
  link: string;
}

const CAT_COLORS = ["#57606a", "#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df"];
const ROW_PX = 13;

/** One KPI as rows = tensors × cols = steps, from `[S, C, N, K]` (minus a category if asked). */
export function kpiMatrix(
  data: Float32Array,
  shape: number[],
  cat: number,
  minus: number,
  stat: number,
): Float32Array {
  const [S, C, N, K] = shape;
  const out = new Float32Array(N * S);
  for (let n = 0; n < N; n++) {
    for (let s = 0; s < S; s++) {
      const at = (c: number) => data[((s * C + c) * N + n) * K + stat];
      out[n * S + s] = minus >= 0 ? at(cat) - at(minus) : at(cat);
    }
  }
  return out;
}

/** Each row mapped to [0, 1] by its own range; differences by their largest magnitude (0 → ½). */
export function rowScaled(m: Float32Array, rows: number, cols: number, signed: boolean): Float32Array {
  const out = new Float32Array(m.length);
  for (let r = 0; r < rows; r++) {
    let lo = Infinity;
    let hi = -Infinity;
    for (let c = 0; c < cols; c++) {
      const v = m[r * cols + c];
      if (Number.isFinite(v)) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
    const amp = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    for (let c = 0; c < cols; c++) {
      const v = m[r * cols + c];
      if (!Number.isFinite(v)) out[r * cols + c] = Number.NaN;
      else if (signed) out[r * cols + c] = 0.5 + v / (2 * amp);
      else out[r * cols + c] = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    }
  }
  return out;
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toFixed(3);
}

function option(sel: HTMLSelectElement, value: string, text: string): void {
  const o = el("option", "", sel);
  o.value = value;
  o.textContent = text;
}

function labelled(parent: HTMLElement, text: string): HTMLSelectElement {
  const lab = el("label", "cb-train-ctl", parent);
  lab.append(`${text} `);
  return el("select", "", lab);
}

export async function render(props: RenderProps<TrainingState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const steps = model.get("steps");
  const cats = model.get("categories");
  const stats = model.get("stats");
  const S = steps.length;
  const kpis: Record<string, { data: Float32Array; shape: number[] }> = {};
  for (const [k, enc] of Object.entries(model.get("_kpis"))) kpis[k] = decode(enc);
  const kpisB: Record<string, { data: Float32Array; shape: number[] }> = {};
  for (const [k, enc] of Object.entries(model.get("_kpis_b") ?? {})) kpisB[k] = decode(enc);
  const loss = decode(model.get("_loss"));
  const lossBEnc = model.get("_loss_b");
  const lossB = lossBEnc && "shape" in lossBEnc ? decode(lossBEnc as Encoded) : null;
  const stepsB = model.get("_steps_b") ?? [];
  const scoresEnc = model.get("_scores");
  const scores = scoresEnc && "shape" in scoresEnc ? decode(scoresEnc as Encoded) : null;
  const patEnc = model.get("_patterns");
  const patterns = patEnc && "shape" in patEnc ? uint8View(patEnc as Encoded) : null;
  const patShape = patEnc && "shape" in patEnc ? (patEnc as Encoded).shape : [];
  const probeSteps = model.get("probe_steps");

  const root = el("div", "cb-root cb-training", host);
  const header = el("div", "cb-header", root); // also where the PNG / SVG buttons go
  const title = el("span", "cb-title", header);
  title.textContent = `Training run · ${model.get("trial")}${model.get("trial_b") ? ` vs ${model.get("trial_b")}` : ""}`;
  // controls and hints are not part of a saved figure (the title states what is shown)
  const bar = el("div", "cb-train-bar cb-figure-skip", root);
  const statSel = labelled(bar, "KPI");
  for (const s of stats) option(statSel, s, s);
  const catSel = labelled(bar, "category");
  for (const c of cats) option(catSel, c, c);
  const minusSel = labelled(bar, "minus");
  option(minusSel, "", "—");
  for (const c of cats) option(minusSel, c, c);
  const kindSel = labelled(bar, "tensors");
  option(kindSel, "act", "activations | gradients");
  option(kindSel, "param", "parameters | gradients");
  const navSel = labelled(bar, "navigator");
  option(navSel, "list", "list");
  option(navSel, "graph", "graph");
  const hasGraph = (model.get("graph_nodes") ?? []).length > 0;
  if (!hasGraph) {
    (navSel.options[1] as HTMLOptionElement).disabled = true;
    navSel.title = "no data flow in this run: record it with circuitboard.training.record_dataflow(rec, batch)";
  }

  const lossCanvas = el("canvas", "cb-train-loss", root);
  lossCanvas.width = 640;
  lossCanvas.height = 150;
  const scrub = el("div", "cb-train-scrub", root);
  const slider = el("input", "cb-train-slider", scrub);
  slider.type = "range";
  slider.min = "0";
  slider.max = String(Math.max(S - 1, 0));
  const stepLabel = el("span", "cb-train-step", scrub);

  // the data-flow graph of the recorded tensors (navigator = graph), above the heatmaps
  const graphBox = el("div", "cb-train-graph", root);
  const graphHead = el("div", "cb-train-map-title", graphBox);
  const graphTitle = el("span", "", graphHead);
  const colourSel = el("select", "cb-figure-skip", graphHead);
  colourSel.setAttribute("aria-label", "graph colour");
  option(colourSel, "act", "colour: activations");
  option(colourSel, "grad", "colour: gradients");
  const graphWrap = el("div", "cb-train-graph-wrap", graphBox);
  const graphCanvas = el("canvas", "cb-train-graph-canvas", graphWrap);
  const graphBar = new ColorBar(graphBox, "");

  const maps = el("div", "cb-train-maps", root);
  // each row has its own range, so the bar names the ends; hovering a row gives its numbers
  const mapBar = new ColorBar(root, "");
  mapBar.el.classList.add("cb-train-colorbar");
  const readout = el("div", "cb-train-readout cb-figure-skip", root);
  readout.textContent = "hover a cell";
  const corrBox = el("div", "cb-train-corr", root);
  const heads = el("div", "cb-train-heads", root);

  interface Panel {
    kind: string;
    trialB: boolean;
    canvas: HTMLCanvasElement;
    cursor: HTMLDivElement;
    rows: HTMLDivElement;
    values: Float32Array;
    names: string[];
  }
  let panels: Panel[] = [];

  const pair = () => (model.get("kind") === "param" ? ["param", "param_grad"] : ["act", "grad"]);
  const namesOf = () => (model.get("kind") === "param" ? model.get("param_names") : model.get("names"));

  function buildMaps(): void {
    maps.replaceChildren();
    panels = [];
    const two = Object.keys(kpisB).length > 0;
    const trials = two ? [false, true] : [false];
    // two trials: one column each (activations over gradients), on one shared step axis
    maps.classList.toggle("cb-train-maps-two", two);
    for (const trialB of trials) {
      const name = trialB ? model.get("trial_b") : model.get("trial");
      const col = two ? el("div", "cb-train-col", maps) : maps;
      if (two) {
        col.dataset.trial = name;
        el("div", "cb-train-col-title", col).textContent = name;
      }
      for (const kind of pair()) {
        const box = el("div", "cb-train-map", col);
        const head = el("div", "cb-train-map-title", box);
        const what = kind.endsWith("grad") ? "gradients" : kind === "act" ? "activations" : "parameters";
        head.textContent = `${what} · ${name}`;
        const body = el("div", "cb-train-map-body", box);
        const rows = el("div", "cb-train-rows", body);
        const names = namesOf();
        for (const n of names) {
          const r = el("div", "cb-train-row", rows);
          const depth = n.split(".").length - 1;
          r.style.paddingLeft = `${Math.min(depth, 6) * 6}px`; // the module tree, by dotted path
          r.textContent = n.split(".").slice(-2).join(".");
          r.title = n;
          r.dataset.label = `${kind}:${n}`;
          r.addEventListener("click", () => {
            model.set("highlight", `${kind}:${n}`);
            model.save_changes();
          }, { signal });
        }
        const wrap = el("div", "cb-train-canvas-wrap", body);
        const canvas = el("canvas", "cb-train-canvas", wrap);
        canvas.style.height = `${names.length * ROW_PX}px`;
        const cursor = el("div", "cb-train-cursor", wrap);
        const axis = el("div", "cb-train-axis", wrap);
        el("span", "", axis).textContent = S ? `step ${steps[0]}` : "";
        el("span", "", axis).textContent = S ? `${steps[S - 1]}` : "";
        const panel: Panel = { kind, trialB, canvas, cursor, rows, values: new Float32Array(0), names };
        canvas.addEventListener("pointermove", (ev) => {
          const cell = cellAt(canvas, ev);
          if (!cell) return;
          const v = panel.values[cell.row * S + cell.col];
          readout.textContent = `${panel.names[cell.row]} · ${kind} · step ${steps[cell.col]} · ${model.get("stat")} = ${fmt(v)}`;
          barForRow(panel, cell.row);
        }, { signal });
        canvas.addEventListener("click", (ev) => {
          const cell = cellAt(canvas, ev);
          if (!cell) return;
          model.set("step_index", cell.col);
          model.save_changes();
        }, { signal });
        panels.push(panel);
      }
    }
  }

  /** The colour bar of the whole map (row ends named), or of one row (its own numbers). */
  function barFor(signed: boolean, lut: Lut): void {
    const minus = model.get("minus");
    const what = `${model.get("stat")} of ${model.get("category")}${minus ? ` − ${minus}` : ""}`;
    if (signed) mapBar.set(lut, "−max |row|", "+max |row|", `${what}: each row scaled to its largest |value| (0 in the middle)`);
    else mapBar.set(lut, "row min", "row max", `${what}: each row scaled to its own range`);
    mapBar.el.dataset.row = "";
  }

  function barForRow(p: Panel, row: number): void {
    let lo = Infinity;
    let hi = -Infinity;
    for (let c = 0; c < S; c++) {
      const v = p.values[row * S + c];
      if (Number.isFinite(v)) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
    }
    if (!Number.isFinite(lo)) return;
    const signed = model.get("minus") !== "";
    const amp = Math.max(Math.abs(lo), Math.abs(hi));
    const lut = signed ? diverging() : sequential(isDark(root));
    mapBar.set(lut, fmt(signed ? -amp : lo), fmt(signed ? amp : hi), `${model.get("stat")} · ${p.kind}:${p.names[row]}`);
    mapBar.el.dataset.row = `${p.kind}:${p.names[row]}`;
  }

  function drawMaps(): void {
    const stat = stats.indexOf(model.get("stat"));
    const cat = cats.indexOf(model.get("category"));
    const minus = model.get("minus") ? cats.indexOf(model.get("minus")) : -1;
    const signed = minus >= 0;
    const lut: Lut = signed ? diverging() : sequential(isDark(root));
    const hl = model.get("highlight");
    for (const p of panels) {
      const t = (p.trialB ? kpisB : kpis)[p.kind];
      if (!t) continue;
      const N = t.shape[2];
      p.values = kpiMatrix(t.data, t.shape, cat, minus, stat);
      // grey: not recorded for this category (a tensor whose dims do not line up with its mask)
      const none: [number, number, number] = isDark(root) ? [48, 54, 61] : [216, 222, 228];
      paintMatrix(p.canvas, N, t.shape[0], rowScaled(p.values, N, t.shape[0], signed), lut, (v) => v, none);
      for (const r of Array.from(p.rows.children) as HTMLElement[]) {
        r.classList.toggle("cb-train-row-hl", r.dataset.label === hl);
      }
    }
    barFor(signed, lut);
    drawCursor();
  }

  function drawCursor(): void {
    const i = model.get("step_index");
    slider.value = String(i);
    stepLabel.textContent = S ? `step ${steps[i]} (${i + 1}/${S})` : "no steps";
    for (const p of panels) {
      const w = p.canvas.getBoundingClientRect().width || 300;
      p.cursor.style.left = `${((i + 0.5) / Math.max(S, 1)) * w}px`;
    }
    drawLoss();
    drawGraph();
  }

  // ---- the data-flow graph --------------------------------------------------------------------
  const gNodes = model.get("graph_nodes") ?? [];
  const gAt = new Map(gNodes.map((row, i) => [row, i] as const));
  const gEdges = (model.get("graph_edges") ?? [])
    .filter(([a, b]) => gAt.has(a) && gAt.has(b))
    .map(([a, b]) => [gAt.get(a), gAt.get(b)] as [number, number]);
  let gLayout: FlowLayout | null = null;
  let gPaint: Parameters<typeof paintFlow>[3] | null = null;
  const gButtons: HTMLButtonElement[] = [];
  const measureCtx = document.createElement("canvas").getContext("2d");
  function graphLayout(): FlowLayout {
    if (gLayout) return gLayout;
    const names = model.get("names");
    if (measureCtx) measureCtx.font = GRAPH_FONT;
    const measure = (t: string) => (measureCtx ? measureCtx.measureText(t).width : t.length * 6.5);
    gLayout = layoutFlow(gNodes.map((r) => names[r]), gEdges, measure);
    const L = gLayout;
    gNodes.forEach((row, v) => {
      // an invisible button over each box: keyboard and screen readers reach the nodes
      const b = el("button", "cb-train-node cb-figure-skip", graphWrap);
      b.type = "button";
      Object.assign(b.style, { left: `${L.x[v]}px`, top: `${L.y[v]}px`, width: `${L.w[v]}px`, height: `${L.h}px` });
      b.dataset.name = names[row];
      b.addEventListener("click", () => {
        const kind = colourSel.value;
        if (model.get("kind") !== "act") model.set("kind", "act");
        model.set("highlight", `${kind}:${names[row]}`);
        model.save_changes();
      }, { signal });
      b.addEventListener("pointerenter", () => {
        readout.textContent = `${names[row]} · ${colourSel.value} · step ${steps[model.get("step_index")]} · ${model.get("stat")} = ${b.dataset.value ?? "–"}`;
      }, { signal });
      gButtons.push(b);
    });
    return L;
  }
  figureCanvas(graphCanvas, (scale, format) => {
    if (!gLayout || !gPaint) return [];
    const [L, P] = [gLayout, gPaint];
    const paint = (ctx: CanvasRenderingContext2D) => paintFlow(ctx, L, gEdges, P);
    return format === "svg" ? recordCanvas(paint) : paintedAt(L.width, L.height, scale, paint);
  });

  function drawGraph(): void {
    const on = model.get("navigator") === "graph" && gNodes.length > 0;
    graphBox.hidden = !on;
    graphBox.classList.toggle("cb-figure-skip", !on);
    if (!on) return;
    const L = graphLayout();
    const kind = colourSel.value;
    const t = kpis[kind];
    const stat = stats.indexOf(model.get("stat"));
    const cat = cats.indexOf(model.get("category"));
    const minus = model.get("minus") ? cats.indexOf(model.get("minus")) : -1;
    const signed = minus >= 0;
    const dark = isDark(root);
    const lut: Lut = signed ? diverging() : sequential(dark);
    const i = model.get("step_index");
    const N = t.shape[2];
    const raw = kpiMatrix(t.data, t.shape, cat, minus, stat);
    // the colour of each node is its heatmap cell's at this step (each row its own range)
    const unit = rowScaled(raw, N, t.shape[0], signed);
    const none = dark ? "rgb(48, 54, 61)" : "rgb(216, 222, 228)";
    const names = model.get("names");
    const hl = model.get("highlight");
    const fill: string[] = [];
    const text: string[] = [];
    gNodes.forEach((row, v) => {
      const u = unit[row * S + i];
      const ok = Number.isFinite(u);
      const q = ok ? Math.max(0, Math.min(255, Math.round(u * 255))) / 255 : 0;
      fill.push(ok ? cssColor(lut, q) : none);
      text.push(ok ? textOn(lut, q) : dark ? "#e6edf3" : "#1f2328");
      const b = gButtons[v];
      b.dataset.label = `${kind}:${names[row]}`;
      b.dataset.fill = fill[v];
      b.dataset.value = fmt(raw[row * S + i]);
      b.setAttribute("aria-label", `${names[row]}: ${model.get("stat")} ${b.dataset.value} at step ${steps[i]}`);
      b.classList.toggle("cb-train-node-hl", hl === b.dataset.label);
    });
    const cs = getComputedStyle(root);
    gPaint = {
      fill,
      text,
      highlight: gButtons.findIndex((b) => b.dataset.label === hl),
      edge: cs.getPropertyValue("--cb-muted").trim() || (dark ? "#8b949e" : "#57606a"),
      stroke: dark ? "#6e7681" : "#8c959f",
      mark: dark ? "#4493f8" : "#0969da",
    };
    const dpr = window.devicePixelRatio || 1;
    graphCanvas.width = Math.round(L.width * dpr);
    graphCanvas.height = Math.round(L.height * dpr);
    graphCanvas.style.width = `${L.width}px`;
    graphCanvas.style.height = `${L.height}px`;
    const ctx = graphCanvas.getContext("2d");
    if (ctx) {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, L.width, L.height);
      paintFlow(ctx, L, gEdges, gPaint);
    }
    const what = `${model.get("stat")} of ${kind === "act" ? "activations" : "gradients"} · ${model.get("category")}${signed ? ` − ${model.get("minus")}` : ""}`;
    graphTitle.textContent = `data flow · ${what} at step ${steps[i]} `;
    graphBar.set(lut, signed ? "−max |row|" : "row min", signed ? "+max |row|" : "row max", `${what}: each tensor scaled to its own range over steps, as its heatmap row`);
    graphBox.dataset.step = String(steps[i]);
  }

  function drawLoss(): void {
    const ctx = lossCanvas.getContext("2d");
    if (!ctx) return;
    const W = lossCanvas.width;
    const H = lossCanvas.height;
    const dark = isDark(root);
    ctx.fillStyle = dark ? "#0d1117" : "#ffffff";
    ctx.fillRect(0, 0, W, H);
    const all = [...steps, ...stepsB];
    const x0 = Math.min(...all);
    const x1 = Math.max(...all, x0 + 1);
    let lo = Infinity;
    let hi = -Infinity;
    for (const arr of [loss.data, lossB?.data ?? new Float32Array(0)]) {
      for (const v of arr) if (Number.isFinite(v)) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
    }
    if (!Number.isFinite(lo)) {
      ctx.fillStyle = dark ? "#8d96a0" : "#656d76";
      ctx.fillText("no loss logged (rec.loss(...) inside each step)", 40, H / 2);
      return;
    }
    if (hi === lo) hi = lo + 1;
    const L = 40;
    const px = (s: number) => L + ((s - x0) / (x1 - x0)) * (W - L - 90);
    const py = (v: number) => 8 + (1 - (v - lo) / (hi - lo)) * (H - 24);
    ctx.font = "10px sans-serif";
    ctx.fillStyle = dark ? "#8d96a0" : "#656d76";
    ctx.fillText(fmt(hi), 2, 12);
    ctx.fillText(fmt(lo), 2, H - 14);
    const C = cats.length;
    const line = (data: Float32Array, xs: number[], c: number, dashed: boolean) => {
      ctx.strokeStyle = CAT_COLORS[c % CAT_COLORS.length];
      ctx.setLineDash(dashed ? [4, 3] : []);
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let pen = false;
      xs.forEach((s, i) => {
        const v = data[i * C + c];
        if (!Number.isFinite(v)) return;
        if (pen) ctx.lineTo(px(s), py(v));
        else ctx.moveTo(px(s), py(v));
        pen = true;
      });
      ctx.stroke();
    };
    cats.forEach((name, c) => {
      line(loss.data, steps, c, false);
      if (lossB) line(lossB.data, stepsB, c, true);
      ctx.setLineDash([]);
      ctx.fillStyle = CAT_COLORS[c % CAT_COLORS.length];
      ctx.fillText(name, W - 84, 14 + 12 * c);
    });
    if (lossB) ctx.fillText(`dashed: ${model.get("trial_b")}`, W - 84, 14 + 12 * C);
    if (S) {
      const x = px(steps[model.get("step_index")]);
      ctx.strokeStyle = dark ? "#e6edf3" : "#1f2328";
      ctx.setLineDash([2, 2]);
      ctx.beginPath();
      ctx.moveTo(x, 4);
      ctx.lineTo(x, H - 12);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.fillStyle = dark ? "#8d96a0" : "#656d76";
    ctx.fillText(`step ${x0}`, L, H - 2);
    ctx.fillText(`${x1}`, W - 110, H - 2);
  }

  // Head scores: rows = layer × head, cols = probe steps; click opens the pattern.
  const scoreSel = labelled(heads, "head score");
  for (const s of model.get("score_names")) option(scoreSel, s, s.replace("_", "-"));
  const headBody = el("div", "cb-train-head-body", heads);
  const scoreCol = el("div", "cb-train-score-col", headBody);
  const scoreBox = el("div", "cb-train-map-body", scoreCol);
  const headRows = el("div", "cb-train-rows cb-train-head-rows", scoreBox);
  const scoreCanvas = el("canvas", "cb-train-scores", scoreBox);
  const scoreBar = new ColorBar(scoreCol, "head score");
  scoreBar.el.classList.add("cb-train-score-bar");
  const patBox = el("div", "cb-train-pattern", headBody);
  const patTitle = el("div", "cb-train-map-title", patBox);
  const patCanvas = el("canvas", "cb-train-pattern-canvas", patBox);
  const patBar = new ColorBar(patBox, "attention weight");
  const [nScores, P, L, Hh] = scores ? scores.shape : [0, 0, 0, 0];

  function drawScores(): void {
    if (!scores || !P) {
      heads.style.display = "none";
      return;
    }
    const si = Math.max(0, model.get("score_names").indexOf(model.get("score")));
    const m = new Float32Array(L * Hh * P);
    for (let p = 0; p < P; p++) {
      for (let l = 0; l < L; l++) {
        for (let h = 0; h < Hh; h++) m[(l * Hh + h) * P + p] = scores.data[((si * P + p) * L + l) * Hh + h];
      }
    }
    paintMatrix(scoreCanvas, L * Hh, P, m, sequential(isDark(root)), (v) => v);
    scoreBar.set(sequential(isDark(root)), "0", "1", `${model.get("score").replace("_", "-")} score (attention mass, 0 to 1)`);
    if (headRows.childElementCount !== L * Hh) {
      headRows.replaceChildren();
      for (let r = 0; r < L * Hh; r++) el("div", "cb-train-row", headRows).textContent = `L${Math.floor(r / Hh)}H${r % Hh}`;
    }
    scoreCanvas.style.height = `${L * Hh * ROW_PX}px`;
    scoreCanvas.dataset.rows = String(L * Hh);
    drawPattern();
  }

  function drawPattern(): void {
    const pk = model.get("picked");
    const none = !patterns || pk.p === undefined || pk.layer === undefined || pk.head === undefined;
    patBox.classList.toggle("cb-figure-skip", none); // an empty panel stays out of figures
    if (!patterns || pk.p === undefined || pk.layer === undefined || pk.head === undefined) {
      patTitle.textContent = "click a (step, head) cell to see its attention pattern";
      return;
    }
    const [, pl, ph, T] = patShape;
    const off = ((pk.p * pl + pk.layer) * ph + pk.head) * T * T;
    paintCodes(patCanvas, T, T, patterns.subarray(off, off + T * T), sequential(isDark(root)));
    patBar.set(sequential(isDark(root)), "0", "1", "attention weight");
    const si = Math.max(0, model.get("score_names").indexOf(model.get("score")));
    const v = scores ? scores.data[((si * P + pk.p) * L + pk.layer) * Hh + pk.head] : Number.NaN;
    patTitle.textContent = `L${pk.layer}H${pk.head} at step ${probeSteps[pk.p]} · ${model.get("score")} ${fmt(v)}`;
    patCanvas.dataset.step = String(probeSteps[pk.p]);
  }

  scoreCanvas.addEventListener("pointermove", (ev) => {
    const cell = cellAt(scoreCanvas, ev);
    if (!cell || !scores) return;
    const l = Math.floor(cell.row / Hh);
    const h = cell.row % Hh;
    readout.textContent = `L${l}H${h} · step ${probeSteps[cell.col]} · ${model.get("score")} = ${fmt(scores.data[((Math.max(0, model.get("score_names").indexOf(model.get("score"))) * P + cell.col) * L + l) * Hh + h])}`;
  }, { signal });
  scoreCanvas.addEventListener("click", (ev) => {
    const cell = cellAt(scoreCanvas, ev);
    if (!cell) return;
    const layer = Math.floor(cell.row / Hh);
    const head = cell.row % Hh;
    model.set("picked", { p: cell.col, layer, head });
    const at = steps.indexOf(probeSteps[cell.col]);
    if (at >= 0) model.set("step_index", at);
    model.save_changes();
    select(link, { layer, head });
  }, { signal });

  function drawCorr(): void {
    corrBox.replaceChildren();
    const rows = model.get("correlations") ?? [];
    if (!rows.length) return;
    const t = el("div", "cb-train-map-title", corrBox);
    t.textContent = "KPIs that move with the loss (r, lag in recorded steps; click to show)";
    for (const r of rows) {
      const b = el("button", "cb-train-corr-row", corrBox);
      b.textContent = `${r.r >= 0 ? "+" : ""}${r.r.toFixed(3)}  lag ${r.lag}  ${r.label}`;
      b.addEventListener("click", () => {
        const [label, stat] = r.label.split("/");
        const kind = label.split(":")[0];
        if (stats.includes(stat)) model.set("stat", stat);
        model.set("kind", kind.startsWith("param") ? "param" : "act");
        model.set("highlight", label);
        model.save_changes();
      }, { signal });
    }
  }

  const sync = () => {
    statSel.value = model.get("stat");
    catSel.value = model.get("category");
    minusSel.value = model.get("minus");
    kindSel.value = model.get("kind");
    scoreSel.value = model.get("score");
    navSel.value = model.get("navigator") === "graph" && hasGraph ? "graph" : "list";
  };
  const bind = (sel: HTMLSelectElement, key: "stat" | "category" | "minus" | "kind" | "score" | "navigator") =>
    sel.addEventListener("change", () => {
      model.set(key, sel.value);
      model.save_changes();
    }, { signal });
  bind(statSel, "stat");
  bind(catSel, "category");
  bind(minusSel, "minus");
  bind(kindSel, "kind");
  bind(scoreSel, "score");
  bind(navSel, "navigator");
  colourSel.addEventListener("change", () => drawGraph(), { signal });
  slider.addEventListener("input", () => {
    model.set("step_index", Number(slider.value));
    model.save_changes();
  }, { signal });

  const onKind = () => {
    sync();
    buildMaps();
    drawMaps();
  };
  const onMap = () => {
    sync();
    drawMaps();
  };
  const onScore = () => {
    sync();
    drawScores();
  };
  const m = model as unknown as AnyModel;
  m.on("change:kind", onKind);
  for (const k of ["stat", "category", "minus", "highlight"]) m.on(`change:${k}`, onMap);
  m.on("change:step_index", drawCursor);
  m.on("change:score", onScore);
  m.on("change:picked", drawPattern);
  const onNav = () => {
    sync();
    drawGraph();
  };
  m.on("change:navigator", onNav);
  const offTheme = followTheme(m, root, () => {
    drawMaps();
    drawScores();
  });
  sync();
  buildMaps();
  drawMaps();
  drawScores();
  drawCorr();
  return () => {
    abort.abort();
    offTheme();
    m.off("change:kind", onKind);
    for (const k of ["stat", "category", "minus", "highlight"]) m.off(`change:${k}`, onMap);
    m.off("change:step_index", drawCursor);
    m.off("change:score", onScore);
    m.off("change:picked", drawPattern);
    m.off("change:navigator", onNav);
  };
}
