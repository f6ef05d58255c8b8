// Circuit view: the graph in layer bands (embedding at the bottom, logits at the top), heads
// across each band, the top-k edges as curves (width and colour by score), the faithfulness
// curve with k marked, and ablations of selected nodes evaluated in the kernel.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { cssColor, diverging } from "../colormaps";
import { el } from "../dom";
import { Fetcher } from "../fetch";
import { onSelection, resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import type { Encoded } from "../types";
import { visible } from "./lens";

type WriterRow = [string, string, number, number]; // name, kind, layer, head (-1)
type ReaderRow = [string, string, number, number[]]; // name, kind, layer, served heads

interface CircuitState {
  description: string;
  n_layers: number;
  n_heads: number;
  n_kv_heads: number;
  nodes_mode: string;
  n_edges: number;
  k: number;
  max_k: number;
  selected: string[];
  ablate_mode: string;
  ablation: { nodes?: string[]; mode?: string; k?: number; value?: number; circuit?: number };
  tokens: string[];
  corrupted_tokens: string[];
  live: boolean;
  _writers: WriterRow[];
  _readers: ReaderRow[];
  _node_scores: Encoded;
  _edges: Encoded;
  _curve: { k?: number[]; value?: number[] };
  _evaluations: Record<string, number>;
  theme: string;
  link: string;
}

export const PAGE = 2048;

export interface Box {
  x: number;
  y: number;
  w: number;
  h: number;
}

export interface CircuitLayout {
  width: number;
  height: number;
  band: number;
  axis: number;
  writers: Box[]; // one per writer
  logits: Box;
}

/** Node boxes: band 0 (top) holds the logits, then layers from the last down to 0, then the
 * embedding. In each layer band the heads sit in the lower half and the MLP in the upper half
 * (right of the heads), so that a head's edge into its own layer's MLP points upwards. */
export function circuitLayout(nLayers: number, nHeads: number, writers: WriterRow[]): CircuitLayout {
  const axis = 40;
  const band = Math.max(16, Math.min(34, Math.floor(660 / Math.max(nLayers + 2, 1))));
  const headW = Math.max(14, Math.min(30, Math.floor(300 / Math.max(nHeads, 1))));
  const gap = Math.max(3, Math.round(headW * 0.25));
  const heads = nHeads * (headW + gap) - gap;
  const mlpW = Math.max(28, headW * 1.5);
  const width = axis + heads + 16 + mlpW + 8;
  const height = (nLayers + 2) * band;
  const nodeH = Math.max(6, Math.round(band * 0.38));
  const centre = (b: number) => b * band + band / 2;
  const boxes: Box[] = writers.map(([, kind, layer, head]) => {
    if (kind === "embed") return { x: axis, y: centre(nLayers + 1) + band * 0.18 - nodeH / 2, w: heads, h: nodeH };
    const c = centre(nLayers - layer);
    if (kind === "head") {
      return { x: axis + head * (headW + gap), y: c + band * 0.22 - nodeH / 2, w: headW, h: nodeH };
    }
    if (kind === "attn") return { x: axis, y: c + band * 0.22 - nodeH / 2, w: heads, h: nodeH };
    return { x: axis + heads + 16, y: c - band * 0.22 - nodeH / 2, w: mlpW, h: nodeH }; // mlp
  });
  const logits = { x: axis, y: centre(0) - nodeH / 2, w: heads + 16 + mlpW, h: nodeH };
  return { width, height, band, axis, writers: boxes, logits };
}

/** Where an edge ends on its reader: q at the left of the head, k / v under the served heads
 * (key slightly left of value), the MLP and logits at the node's bottom. */
export function readerPoint(
  lay: CircuitLayout,
  reader: ReaderRow,
  headBox: (layer: number, head: number) => Box | undefined,
  mlpBox: (layer: number) => Box | undefined,
  sourceX: number,
): [number, number] {
  const [, kind, layer, serves] = reader;
  if (kind === "logits") {
    const b = lay.logits;
    return [Math.max(b.x + 4, Math.min(b.x + b.w - 4, sourceX)), b.y + b.h];
  }
  if (kind === "mlp") {
    const b = mlpBox(layer);
    return b ? [b.x + b.w / 2, b.y + b.h] : [sourceX, 0];
  }
  const boxes = serves.map((h) => headBox(layer, h)).filter((b): b is Box => !!b);
  if (!boxes.length) {
    const b = headBox(layer, -1);
    return b ? [b.x + b.w / 2, b.y + b.h] : [sourceX, 0];
  }
  const left = Math.min(...boxes.map((b) => b.x));
  const right = Math.max(...boxes.map((b) => b.x + b.w));
  const y = boxes[0].y + boxes[0].h;
  if (kind === "q") return [left + (right - left) * 0.3, y];
  const mid = (left + right) / 2;
  return [kind === "k" ? mid - 2 : kind === "v" ? mid + 2 : mid, y];
}

/** Faithfulness at k from the curve (linear in log(1 + k)); NaN without a curve. */
export function interpolateCurve(ks: number[], vs: number[], k: number): number {
  if (!ks.length) return Number.NaN;
  if (k <= ks[0]) return vs[0];
  for (let i = 1; i < ks.length; i++) {
    if (k <= ks[i]) {
      const a = Math.log1p(ks[i - 1]);
      const b = Math.log1p(ks[i]);
      const t = b > a ? (Math.log1p(k) - a) / (b - a) : 1;
      return vs[i - 1] + t * (vs[i] - vs[i - 1]);
    }
  }
  return vs[vs.length - 1];
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return "–";
  return v.toFixed(3).replace("-", "−");
}

export async function render(props: RenderProps<CircuitState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const offline = document.getElementById("cb-state") !== null; // a saved report: no kernel
  const L = model.get("n_layers");
  const H = model.get("n_heads");
  const writers = model.get("_writers");
  const readers = model.get("_readers");
  const nEdges = model.get("n_edges");
  const maxK = model.get("max_k");
  const scores = decode(model.get("_node_scores")).data; // [2, writers]: out, in
  const U = writers.length;
  const lay = circuitLayout(L, H, writers);
  const headIndex = new Map<string, number>();
  writers.forEach(([, kind, layer, head], i) => {
    if (kind === "head") headIndex.set(`${layer},${head}`, i);
    if (kind === "attn") headIndex.set(`${layer},-1`, i);
    if (kind === "mlp") headIndex.set(`${layer},mlp`, i);
  });
  const headBox = (layer: number, head: number) => {
    const i = headIndex.get(`${layer},${head}`) ?? headIndex.get(`${layer},-1`);
    return i === undefined ? undefined : lay.writers[i];
  };
  const mlpBox = (layer: number) => {
    const i = headIndex.get(`${layer},mlp`);
    return i === undefined ? undefined : lay.writers[i];
  };
  // The node that owns each reader (a KV input belongs to every head it serves).
  const readerOwners: number[][] = readers.map(([, kind, layer, serves]) => {
    if (kind === "mlp") return [headIndex.get(`${layer},mlp`) ?? -1];
    if (kind === "logits") return [U];
    if (kind === "attn") return [headIndex.get(`${layer},-1`) ?? -1];
    return serves.map((h) => headIndex.get(`${layer},${h}`) ?? -1);
  });
  const nodeName = (i: number) => (i === U ? "logits" : writers[i][0]);

  // Edges as flat triples (writer, reader, score), strongest first; pages are appended.
  let edges = decode(model.get("_edges")).data;
  let loaded = edges.length / 3;
  const initial = loaded;
  // Edge widths scale with |score| relative to the strongest edge not leaving the embedding
  // (the embedding's edges carry the whole input and would make every other edge a hairline).
  const strongest = () => {
    let m = 0;
    for (let e = 0; e < Math.min(loaded, 4096); e++) if (edges[3 * e] !== 0) m = Math.max(m, Math.abs(edges[3 * e + 2]));
    return m || Math.abs(edges[2]) || 1;
  };
  let maxAbs = strongest();

  const root = el("div", "cb-root cb-circuit", host);
  root.tabIndex = 0;
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Circuit";
  const status = el("span", "cb-status", header);
  const desc = el("div", "cb-caption cb-circ-desc", root);
  desc.textContent = model.get("description");
  const prompts = el("div", "cb-circ-prompts", root);
  const clean = model.get("tokens");
  const corr = model.get("corrupted_tokens");
  for (const [label, toks, other] of [
    ["clean", clean, corr],
    ["corrupted", corr, clean],
  ] as [string, string[], string[]][]) {
    const line = el("div", "cb-circ-prompt", prompts);
    el("span", "cb-circ-plabel", line).textContent = `${label}:`;
    toks.forEach((t, i) => {
      const s = el("span", `cb-token${other[i] !== t ? " cb-circ-diff" : ""}`, line);
      s.textContent = visible(t);
    });
  }

  const controls = el("div", "cb-circ-controls", root);
  const sliderLabel = el("label", "cb-circ-slider", controls);
  el("span", "", sliderLabel).textContent = "edges";
  const slider = el("input", "cb-circ-range", sliderLabel);
  slider.type = "range";
  slider.min = "0";
  slider.max = String(maxK);
  slider.step = "1";
  slider.value = String(model.get("k"));
  slider.setAttribute("aria-label", "number of edges shown");
  const kText = el("span", "cb-circ-k", sliderLabel);
  const modeSel = el("select", "cb-select", controls);
  modeSel.setAttribute("aria-label", "ablation mode");
  modeSel.add(new Option("without selection", "without"));
  modeSel.add(new Option("only selection", "only"));
  modeSel.value = model.get("ablate_mode") === "only" ? "only" : "without";
  const ablateBtn = el("button", "cb-figure-button cb-circ-ablate", controls);
  ablateBtn.type = "button";
  ablateBtn.textContent = "ablate selection";
  const clearBtn = el("button", "cb-figure-button cb-circ-clear", controls);
  clearBtn.type = "button";
  clearBtn.textContent = "clear";
  const result = el("span", "cb-status cb-circ-result", controls);

  const body = el("div", "cb-body", root);
  const figure = el("div", "cb-figure cb-circ-figure", body);
  figure.style.width = `${lay.width}px`;
  figure.style.height = `${lay.height}px`;
  const canvas = el("canvas", "cb-circ-graph", figure);
  canvas.style.width = `${lay.width}px`;
  canvas.style.height = `${lay.height}px`;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `circuit graph: ${L} layers, ${nEdges} edges`);
  // Node boxes by name, in CSS pixels of the canvas (for tests and tools that point at nodes).
  (canvas as HTMLCanvasElement & { cbNodeBox?: (name: string) => Box | null }).cbNodeBox = (name: string) => {
    if (name === "logits") return lay.logits;
    const i = writers.findIndex((w) => w[0] === name);
    return i < 0 ? null : lay.writers[i];
  };
  const tip = el("div", "cb-tip cb-circ-tip", root);
  tip.hidden = true;
  const side = el("div", "cb-side cb-circ-side", body);
  el("div", "cb-caption", side).textContent = "faithfulness of the top k edges";
  const curveCanvas = el("canvas", "cb-circ-curve", side);
  const CW = 280;
  const CH = 190;
  curveCanvas.style.width = `${CW}px`;
  curveCanvas.style.height = `${CH}px`;
  const curveText = el("div", "cb-caption cb-circ-curvetext", side);
  const legend = el("div", "cb-caption cb-circ-legend", side);
  legend.textContent =
    "blue: the edge helps the answer · red: it hurts · width: |score| · click a node to select it in linked views, shift-click to add it";

  el("div", "cb-caption cb-circ-tophead", side).textContent = "strongest edges";
  const topList = el("ol", "cb-circ-top", side);
  const drawTop = () => {
    topList.replaceChildren();
    for (let e = 0; e < Math.min(12, loaded); e++) {
      const li = el("li", "cb-circ-topitem", topList);
      const src = edges[3 * e];
      li.textContent = `${writers[src][0]} → ${readers[edges[3 * e + 1]][0]}  ${fmt(edges[3 * e + 2])}`;
      li.dataset.node = writers[src][0];
    }
  };
  drawTop();

  let hovered: number | null = null;
  const exact = new Map<number, number>(
    Object.entries(model.get("_evaluations") ?? {})
      .filter(([key]) => /^k=\d+$/.test(key))
      .map(([key, v]) => [Number(key.slice(2)), v as number]),
  );

  const k = () => Math.max(0, Math.min(Number(slider.value), maxK));
  const selected = () => new Set(model.get("selected") ?? []);

  const nodeBox = (i: number) => (i === U ? lay.logits : lay.writers[i]);
  const linkedNode = (): number | null => {
    const layer = link.get("layer");
    if (layer === null || layer === undefined) return null;
    const head = link.get("head");
    const i = head === null || head === undefined ? headIndex.get(`${layer},mlp`) : headIndex.get(`${layer},${head}`) ?? headIndex.get(`${layer},-1`);
    return i ?? null;
  };

  const draw = () => {
    const t0 = performance.now();
    const dark = isDark(root);
    const lut = diverging();
    const dpr = Math.max(1, Math.min(3, Math.round(window.devicePixelRatio || 1)));
    canvas.width = lay.width * dpr;
    canvas.height = lay.height * dpr;
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const style = getComputedStyle(root);
    const fg = style.getPropertyValue("--cb-fg").trim() || "#111";
    const muted = style.getPropertyValue("--cb-muted").trim() || "#666";
    const border = style.getPropertyValue("--cb-border").trim() || "#ccc";
    const accent = style.getPropertyValue("--cb-accent").trim() || "#0969da";
    const active = style.getPropertyValue("--cb-active").trim() || "#cf222e";
    const panel = style.getPropertyValue("--cb-panel").trim() || "#f6f8fa";
    ctx.clearRect(0, 0, lay.width, lay.height);
    // layer bands
    ctx.font = "10px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let b = 0; b < L + 2; b++) {
      if (b % 2 === 1) {
        ctx.fillStyle = panel;
        ctx.fillRect(0, b * lay.band, lay.width, lay.band);
      }
      ctx.fillStyle = muted;
      const label = b === 0 ? "out" : b === L + 1 ? "in" : `L${L - b}`;
      if (b === 0 || b === L + 1 || L <= 32 || (L - b) % 2 === 0) ctx.fillText(label, lay.axis - 6, b * lay.band + lay.band / 2);
    }
    const n = Math.min(k(), loaded);
    const degIn = new Int32Array(U + 1);
    const degOut = new Int32Array(U + 1);
    for (let e = 0; e < n; e++) {
      degOut[edges[3 * e]]++;
      for (const o of readerOwners[edges[3 * e + 1]]) if (o >= 0) degIn[o]++;
    }
    // edges, weakest first so the strongest are on top
    const focus = hovered;
    for (let e = n - 1; e >= 0; e--) {
      const src = edges[3 * e];
      const rd = edges[3 * e + 1];
      const s = edges[3 * e + 2];
      const a = Math.sqrt(Math.min(1, Math.abs(s) / maxAbs));
      const on = focus === null || src === focus || readerOwners[rd].includes(focus);
      const sb = lay.writers[src];
      const sx = sb.x + sb.w / 2;
      const sy = sb.y;
      const [tx, ty] = readerPoint(lay, readers[rd], headBox, mlpBox, sx);
      const dy = Math.max(8, sy - ty);
      ctx.strokeStyle = cssColor(lut, 0.5 + 0.5 * Math.max(-1, Math.min(1, s / maxAbs)));
      ctx.globalAlpha = on ? 0.25 + 0.7 * a : 0.06;
      ctx.lineWidth = 0.6 + 3.4 * a;
      ctx.beginPath();
      ctx.moveTo(sx, sy);
      ctx.bezierCurveTo(sx, sy - dy * 0.45, tx, ty + dy * 0.45, tx, ty);
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    // nodes
    const sel = selected();
    const linked = linkedNode();
    let sMax = 0;
    for (let i = 1; i < U; i++) sMax = Math.max(sMax, Math.abs(scores[i]));
    sMax = sMax || 1;
    for (let i = 0; i <= U; i++) {
      const b = nodeBox(i);
      const used = degIn[i] + degOut[i] > 0 || i === U;
      const v = i < U ? scores[i] / sMax : 0;
      ctx.globalAlpha = used ? 1 : 0.35;
      const t = Math.sign(v) * Math.sqrt(Math.min(1, Math.abs(v)));
      ctx.fillStyle = i < U ? cssColor(lut, 0.5 + 0.5 * t) : panel;
      ctx.fillRect(b.x, b.y, b.w, b.h);
      ctx.strokeStyle = border;
      ctx.lineWidth = 1;
      ctx.strokeRect(b.x + 0.5, b.y + 0.5, b.w - 1, b.h - 1);
      ctx.globalAlpha = 1;
      const name = nodeName(i);
      if (sel.has(name)) {
        ctx.strokeStyle = accent;
        ctx.lineWidth = 2.5;
        ctx.strokeRect(b.x - 1.5, b.y - 1.5, b.w + 3, b.h + 3);
      }
      if (i === linked || i === hovered) {
        ctx.strokeStyle = i === hovered ? fg : active;
        ctx.lineWidth = 1.5;
        ctx.strokeRect(b.x - 3.5, b.y - 3.5, b.w + 7, b.h + 7);
      }
    }
    ctx.fillStyle = dark ? fg : fg;
    ctx.textAlign = "center";
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillText("logits", lay.logits.x + lay.logits.w / 2, lay.logits.y + lay.logits.h / 2);
    const emb = lay.writers[0];
    ctx.fillText("embedding", emb.x + emb.w / 2, emb.y + emb.h / 2);
    // head numbers under the lowest band
    ctx.fillStyle = muted;
    ctx.font = "9px ui-monospace, monospace";
    for (let h = 0; h < H && model.get("nodes_mode") === "heads"; h++) {
      const b = headBox(0, h);
      if (b) ctx.fillText(`h${h}`, b.x + b.w / 2, b.y + b.h + Math.max(5, lay.band * 0.18));
    }
    const mb = mlpBox(0);
    if (mb) ctx.fillText("mlp", mb.x + mb.w / 2, mb.y - Math.max(5, lay.band * 0.16));
    root.dataset.paintMs = (performance.now() - t0).toFixed(1);
    root.dataset.drawn = String(n);
    root.dataset.loaded = String(loaded);
    root.dataset.k = String(k());
    drawCurve();
  };

  const curveValue = (kk: number): [number, boolean] => {
    const ex = exact.get(kk);
    if (ex !== undefined) return [ex, true];
    const c = model.get("_curve") ?? {};
    return [interpolateCurve(c.k ?? [], c.value ?? [], kk), false];
  };

  const drawCurve = () => {
    const dpr = Math.max(1, Math.min(3, Math.round(window.devicePixelRatio || 1)));
    curveCanvas.width = CW * dpr;
    curveCanvas.height = CH * dpr;
    const ctx = curveCanvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const style = getComputedStyle(root);
    const fg = style.getPropertyValue("--cb-fg").trim() || "#111";
    const muted = style.getPropertyValue("--cb-muted").trim() || "#666";
    const border = style.getPropertyValue("--cb-border").trim() || "#ccc";
    const accent = style.getPropertyValue("--cb-accent").trim() || "#0969da";
    const active = style.getPropertyValue("--cb-active").trim() || "#cf222e";
    ctx.clearRect(0, 0, CW, CH);
    const c = model.get("_curve") ?? {};
    const ks = c.k ?? [];
    const vs = c.value ?? [];
    const left = 34;
    const right = 8;
    const top = 8;
    const bottom = 26;
    const lo = Math.min(0, ...vs.filter(Number.isFinite));
    const hi = Math.max(1, ...vs.filter(Number.isFinite));
    const X = (kk: number) => left + ((CW - left - right) * Math.log1p(kk)) / Math.log1p(Math.max(1, nEdges));
    const Y = (v: number) => top + ((CH - top - bottom) * (hi - v)) / (hi - lo || 1);
    ctx.strokeStyle = border;
    ctx.lineWidth = 1;
    ctx.strokeRect(left + 0.5, top + 0.5, CW - left - right - 1, CH - top - bottom - 1);
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of [0, 0.5, 1]) {
      ctx.fillText(v.toFixed(1), left - 4, Y(v));
      ctx.setLineDash([2, 3]);
      ctx.beginPath();
      ctx.moveTo(left, Y(v));
      ctx.lineTo(CW - right, Y(v));
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const t of [1, 10, 100, 1000, 10000, 100000]) {
      if (t > nEdges) break;
      ctx.fillText(t >= 1000 ? `${t / 1000}k` : String(t), X(t), CH - bottom + 4);
    }
    ctx.fillText("edges kept (log scale)", left + (CW - left - right) / 2, CH - 11);
    if (ks.length) {
      ctx.strokeStyle = accent;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ks.forEach((kk, i) => (i ? ctx.lineTo(X(kk), Y(vs[i])) : ctx.moveTo(X(kk), Y(vs[i]))));
      ctx.stroke();
      ctx.fillStyle = accent;
      ks.forEach((kk, i) => ctx.fillRect(X(kk) - 1.5, Y(vs[i]) - 1.5, 3, 3));
    }
    const kk = k();
    const [v, isExact] = curveValue(kk);
    ctx.strokeStyle = active;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(X(kk), top);
    ctx.lineTo(X(kk), CH - bottom);
    ctx.stroke();
    if (Number.isFinite(v)) {
      ctx.fillStyle = active;
      ctx.beginPath();
      ctx.arc(X(kk), Y(v), 3.5, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.fillStyle = fg;
    curveText.textContent = `k = ${kk} of ${nEdges} edges · faithfulness ${isExact ? "" : "≈ "}${fmt(v)}`;
    root.dataset.faithfulness = Number.isFinite(v) ? v.toFixed(4) : "";
    kText.textContent = `${kk}`;
    status.textContent = `${nEdges.toLocaleString("en-US")} edges · showing the top ${kk}`;
  };

  const ensureEdges = async (want: number) => {
    while (loaded < Math.min(want, nEdges)) {
      const start = initial + Math.floor((loaded - initial) / PAGE) * PAGE;
      root.dataset.paging = "true";
      try {
        const { reply, buffers } = await fetcher.get({ kind: "fetch-edges", start, stop: start + PAGE });
        const block = decode(reply.edges as Encoded, buffers).data;
        if (start !== loaded) continue; // a concurrent page already arrived
        const grown = new Float32Array(edges.length + block.length);
        grown.set(edges);
        grown.set(block, edges.length);
        edges = grown;
        loaded = edges.length / 3;
        if (!block.length) break;
      } catch (err) {
        status.textContent = String((err as Error).message ?? err);
        break;
      } finally {
        delete root.dataset.paging;
      }
    }
    maxAbs = strongest();
  };

  const setK = async (kk: number, save: boolean) => {
    slider.value = String(kk);
    draw();
    if (kk > loaded) {
      await ensureEdges(kk);
      draw();
    }
    if (save && model.get("k") !== kk) {
      model.set("k", kk);
      model.save_changes();
    }
    if (save && !exact.has(kk) && model.get("live") && !offline) {
      try {
        const { reply } = await fetcher.get({ kind: "fetch-evaluation", k: kk });
        exact.set(kk, reply.value as number);
        if (k() === kk) drawCurve();
      } catch {
        /* the interpolated value stays */
      }
    }
  };

  const hit = (ev: { clientX: number; clientY: number }): number | null => {
    const rect = canvas.getBoundingClientRect();
    const x = ((ev.clientX - rect.left) / rect.width) * lay.width;
    const y = ((ev.clientY - rect.top) / rect.height) * lay.height;
    for (let i = 0; i <= U; i++) {
      const b = nodeBox(i);
      if (x >= b.x - 2 && x <= b.x + b.w + 2 && y >= b.y - 3 && y <= b.y + b.h + 3) return i;
    }
    return null;
  };

  const tipText = (i: number): string => {
    const n = Math.min(k(), loaded);
    const ins: string[] = [];
    const outs: string[] = [];
    let nin = 0;
    let nout = 0;
    for (let e = 0; e < n; e++) {
      const src = edges[3 * e];
      const rd = edges[3 * e + 1];
      const s = edges[3 * e + 2];
      if (src === i) {
        nout++;
        if (outs.length < 4) outs.push(`  → ${readers[rd][0]} ${fmt(s)}`);
      }
      if (readerOwners[rd].includes(i)) {
        nin++;
        if (ins.length < 4) ins.push(`  ${writers[src][0]} → ${readers[rd][0]} ${fmt(s)}`);
      }
    }
    const lines = [nodeName(i)];
    if (i < U) lines.push(`score ${fmt(scores[i])} (sum of out-edges) · in ${fmt(scores[U + i])}`);
    lines.push(`in-edges shown: ${nin} · out-edges shown: ${nout}`);
    if (ins.length) lines.push("strongest in:", ...ins);
    if (outs.length) lines.push("strongest out:", ...outs);
    return lines.join("\n");
  };

  canvas.addEventListener(
    "pointermove",
    (ev) => {
      const i = hit(ev);
      if (i !== hovered) {
        hovered = i;
        draw();
      }
      if (i === null) {
        tip.hidden = true;
        delete root.dataset.hover;
        return;
      }
      tip.hidden = false;
      tip.textContent = tipText(i);
      const rr = root.getBoundingClientRect();
      tip.style.left = `${Math.min(ev.clientX - rr.left + 14, Math.max(0, rr.width - 300))}px`;
      tip.style.top = `${ev.clientY - rr.top + 14}px`;
      root.dataset.hover = nodeName(i);
    },
    { signal },
  );
  canvas.addEventListener(
    "pointerleave",
    () => {
      hovered = null;
      tip.hidden = true;
      delete root.dataset.hover;
      draw();
    },
    { signal },
  );
  canvas.addEventListener(
    "click",
    (ev) => {
      const i = hit(ev);
      if (i === null) return;
      const name = nodeName(i);
      const sel = selected();
      let next: string[];
      if (ev.shiftKey || ev.metaKey || ev.ctrlKey) {
        if (sel.has(name)) sel.delete(name);
        else sel.add(name);
        next = [...sel];
      } else {
        next = sel.size === 1 && sel.has(name) ? [] : [name];
      }
      model.set("selected", next);
      model.save_changes();
      if (i < U) {
        const [, kind, layer, head] = writers[i];
        if (kind === "head") select(link, { layer, head });
        else if (kind === "mlp" || kind === "attn") select(link, { layer, head: null });
      }
      draw();
    },
    { signal },
  );

  let dragging: number | undefined;
  slider.addEventListener(
    "input",
    () => {
      const kk = k();
      if (dragging !== undefined) cancelAnimationFrame(dragging);
      dragging = requestAnimationFrame(() => {
        dragging = undefined;
        void setK(kk, false);
      });
    },
    { signal },
  );
  slider.addEventListener("change", () => void setK(k(), true), { signal });
  modeSel.addEventListener(
    "change",
    () => {
      model.set("ablate_mode", modeSel.value);
      model.save_changes();
    },
    { signal },
  );
  clearBtn.addEventListener(
    "click",
    () => {
      model.set("selected", []);
      model.save_changes();
      result.textContent = "";
      draw();
    },
    { signal },
  );

  const showAblation = () => {
    const a = model.get("ablation") ?? {};
    if (a.value === undefined || !a.nodes) return;
    result.textContent = `${a.mode === "only" ? "only" : "without"} ${a.nodes.join(", ")} at k = ${a.k}: ${fmt(a.value)} (circuit ${fmt(a.circuit ?? Number.NaN)})`;
    root.dataset.ablation = String(a.value);
  };

  ablateBtn.addEventListener(
    "click",
    async () => {
      const nodes = [...selected()].sort();
      if (!nodes.length) {
        result.textContent = "select nodes first (click; shift-click adds)";
        return;
      }
      const msg = { kind: "fetch-ablation", nodes, mode: modeSel.value, k: k() };
      result.textContent = "evaluating in the kernel…";
      root.dataset.ablating = "true";
      try {
        const { reply } = await fetcher.get(msg);
        result.textContent = `${reply.mode} ${nodes.join(", ")} at k = ${reply.k}: ${fmt(reply.value as number)} (circuit ${fmt(reply.circuit as number)})`;
        root.dataset.ablation = String(reply.value);
      } catch (err) {
        result.textContent = offline
          ? "live ablation needs a running kernel (this is a saved report: only the precomputed single-node ablations are here)"
          : String((err as Error).message ?? err);
        root.dataset.ablation = "unavailable";
      } finally {
        delete root.dataset.ablating;
      }
    },
    { signal },
  );
  if (offline) ablateBtn.title = "a saved report has no kernel: only precomputed ablations (single top nodes) answer";

  const onK = () => void setK(model.get("k"), false);
  const onSelected = () => draw();
  const onMode = () => {
    modeSel.value = model.get("ablate_mode") === "only" ? "only" : "without";
  };
  model.on("change:k", onK);
  model.on("change:selected", onSelected);
  model.on("change:ablation", showAblation);
  model.on("change:ablate_mode", onMode);
  const offSel = onSelection(link, ["layer", "head"], draw);
  const offTheme = followTheme(model as AnyModel, root, draw);
  draw();
  await ensureEdges(k());
  draw();
  void setK(k(), true); // live: asks the kernel for the exact value at k (the curve interpolates)
  showAblation();
  root.dataset.ready = "true";

  return () => {
    abort.abort();
    offSel();
    offTheme();
    model.off("change:k", onK);
    model.off("change:selected", onSelected);
    model.off("change:ablation", showAblation);
    model.off("change:ablate_mode", onMode);
    fetcher.dispose();
    root.remove();
  };
}
