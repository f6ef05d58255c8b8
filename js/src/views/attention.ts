// Attention view: a grid of every head's thumbnail, the selected head zoomable on canvas with
// token labels, and the prompt as a (virtualized) token strip coloured by the active token's
// row (where it looks) and column (who looks at it). Heads arrive on demand and are cached.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { uint8View } from "../codec";
import { type Lut, NAN_RGBA, sequential } from "../colormaps";
import { type Fetched, Fetcher, prefetchAllowed } from "../fetch";
import { cssToUint32, type MatrixData, paintCodes, ZoomHeatmap } from "../heatmap";
import { hover, onSelection, resolveLink, resolveModel, select } from "../link";
import { followTheme, isDark } from "../theme";
import { type ImageInfo, tokenStrip } from "../patches";
import { NAN_PAINT } from "../tokens";
import type { Encoded } from "../types";
import { el } from "../dom";
import { TiledHead, tilesFor } from "./attention_tiles";
import { aheadCells, ExplainPanel } from "./explain_panel";
import { ColorBar } from "../colorbar";
import { figureHooks } from "../figure";

interface AttentionState {
  tokens: string[];
  layer_indices: number[];
  n_heads: number;
  causal: boolean;
  scores: Record<string, (number | null)[][]>;
  _initial: { layer: number; head: number; pattern?: Encoded; overview?: Encoded };
  _thumbs: Encoded;
  image: ImageInfo | Record<string, never>; // an image capture's patch grid ({} for text)
  _thumbs_ready?: boolean;
  overview_size?: number;
  pool?: string;
  tile_size?: number;
  theme: string;
  link: string;
  explainable?: boolean; // explain panel: a click explains the cell's score in the kernel
  explain_target?: string;
  // frames (e.g. a probe batch at each training step; widgets/_attention_frames.py): the one
  // shown, the view whose trait picks it, and, after a report switched frames, every head
  _frame?: number;
  _follow?: { model?: string; trait?: string; key?: string; steps?: number[] };
  _heads?: Encoded | Record<string, never>;
  _frame_wanted?: number; // report only: the frame clicked (the nearest kept one is shown)
}

interface Head {
  layer: number; // model layer index
  head: number;
  codes: Uint8Array; // [query, key] uint8 codes, value = lo + code * scale
  lo: number;
  scale: number;
  nonfinite: number | null; // the code that marks NaN / ±inf, when the data has any
  n: number;
  reduced: boolean; // a thumbnail standing in for a head the report left out
  tiled?: TiledHead; // a long prompt's head: pooled overview + full-resolution tiles
}

type Mode = "both" | "row" | "col";

const CACHE_BYTES = 256 * 2 ** 20; // decoded heads kept in the browser
const WARM_BYTES = 32 * 2 ** 20; // live: every head is fetched ahead of clicks up to this size (a layer per message)
const MAX_TILE_CELLS = 1536 * 1536; // zoomed in this far, the visible region comes at full resolution
const COMPUTED_SCORES = ["previous_token", "first_token", "entropy"]; // long prompts: with the thumbnails
const SCORE_LABELS: Record<string, string> = {
  previous_token: "previous token",
  induction: "induction",
  duplicate_token: "duplicate token",
  first_token: "first token",
  entropy: "entropy (low = sharp)",
};
/** Scores in one order in every view: the named ones first, then any others by name. */
export function scoreOrder(names: string[]): string[] {
  const known = Object.keys(SCORE_LABELS);
  const rank = (k: string) => (known.includes(k) ? known.indexOf(k) : known.length);
  return [...names].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
}
const ROW_RGB = { light: [9, 105, 218], dark: [68, 147, 248] }; // where the token looks
const COL_RGB = { light: [188, 76, 0], dark: [255, 166, 87] }; // who looks at the token

function button(label: string, title: string, parent: HTMLElement): HTMLButtonElement {
  const b = el("button", "cb-button", parent);
  b.type = "button";
  b.textContent = label;
  b.title = title;
  b.setAttribute("aria-label", title);
  return b;
}

/** Token text as an axis label: whitespace made visible, never HTML (drawn on canvas). */
export function labelOf(tok: string): string {
  return tok.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/^ /, "·");
}

/** The value of a code: NaN for the code that marks non-finite data. */
function valueOf(h: Head, code: number): number {
  return code === h.nonfinite ? Number.NaN : h.lo + code * h.scale;
}

function fmtP(p: number): string {
  return Number.isFinite(p) ? p.toFixed(3) : "NaN/∞ (not a finite number)";
}

/** A copy of `lut` whose entry `code` is magenta: non-finite cells stand out in every view. */
function markNonFinite(lut: Lut, code: number | null | undefined): Lut {
  if (code === null || code === undefined) return lut;
  const out = new Uint8ClampedArray(lut);
  out.set(NAN_RGBA, 4 * code);
  return out;
}

/** Thumbnails are drawn on a square-root scale so weak but structured heads stay visible. */
function sqrtLut(lut: Lut): Lut {
  const out = new Uint8ClampedArray(256 * 4);
  for (let c = 0; c < 256; c++) out.set(lut.subarray(4 * Math.round(Math.sqrt(c / 255) * 255), 4 * Math.round(Math.sqrt(c / 255) * 255) + 4), 4 * c);
  return out;
}

export async function render(props: RenderProps<AttentionState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const tokens = model.get("tokens");
  const layers = model.get("layer_indices");
  const nHeads = model.get("n_heads");
  const scores = model.get("scores") ?? {};
  const n = tokens.length;
  const causal = model.get("causal") ?? false;
  const thumbsEnc = model.get("_thumbs");
  const thumbsReady = model.get("_thumbs_ready") ?? true;
  const thumbCodes = thumbsReady ? uint8View(thumbsEnc) : uint8View(thumbsEnc).slice(); // filled as they arrive
  const tSide = thumbsEnc.shape[thumbsEnc.shape.length - 1];
  const overviewSide = model.get("overview_size") ?? 0; // > 0: heads come as overview + tiles
  const long = overviewSide > 0;
  const tileSize = model.get("tile_size") ?? 512;
  const pool = model.get("pool") ?? "max";
  const follow = model.get("_follow") ?? {};
  const frameSteps = follow.steps ?? [];
  const frame = model.get("_frame") ?? -1;
  let keptFrames: number[] | null = null; // a report's embedded frames (null: every frame)
  let offFollow: () => void = () => undefined;
  if (long) for (const k of COMPUTED_SCORES) scores[k] ??= layers.map(() => Array<number | null>(nHeads).fill(null));

  // ---- DOM ------------------------------------------------------------------------------
  const root = el("div", "cb-root cb-attention", host);
  root.tabIndex = 0;
  root.setAttribute("aria-label", "attention view; arrows move the token (left/right) and the head (up/down)");
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Attention";
  if (frameSteps.length && frame >= 0) el("span", "cb-title cb-att-step", header).textContent = `step ${frameSteps[frame]}`;
  const layerSel = el("select", "cb-select", header);
  layerSel.setAttribute("aria-label", "layer");
  for (const l of layers) layerSel.add(new Option(`Layer ${l}`, String(l)));
  const headSel = el("select", "cb-select", header);
  headSel.setAttribute("aria-label", "head");
  for (let h = 0; h < nHeads; h++) headSel.add(new Option(`Head ${h}`, String(h)));
  const scoreSel = el("select", "cb-select", header);
  scoreSel.setAttribute("aria-label", "head score");
  scoreSel.title = "Highlight (bar under each thumbnail) and sort heads by a score";
  scoreSel.add(new Option("scores: off", ""));
  for (const k of scoreOrder(Object.keys(scores))) scoreSel.add(new Option(SCORE_LABELS[k] ?? k.replace(/_/g, " "), k));
  const sortLabel = el("label", "cb-check", header);
  const sortBox = el("input", "", sortLabel);
  sortBox.type = "checkbox";
  sortBox.setAttribute("aria-label", "sort heads by score");
  sortLabel.append(" sort");
  const scaleSel = el("select", "cb-select", header);
  scaleSel.setAttribute("aria-label", "colour scale");
  scaleSel.title = "Colour scale of the heatmap; the tooltip always shows the exact weight";
  scaleSel.add(new Option("linear", "linear"));
  scaleSel.add(new Option("√ scale", "sqrt"));
  scaleSel.value = n > 256 ? "sqrt" : "linear"; // long prompts: most weights are tiny
  const modeSel = el("select", "cb-select", header);
  modeSel.setAttribute("aria-label", "token colouring");
  modeSel.add(new Option("looks at + looked at by", "both"));
  modeSel.add(new Option("looks at (row)", "row"));
  modeSel.add(new Option("looked at by (column)", "col"));
  // Without a causal mask a token looks both ways, so "both" (row before it, column after)
  // would mix two questions: start with where it looks.
  if (!causal) modeSel.value = "row";
  const zoomOut = button("−", "zoom out (-)", header);
  const zoomIn = button("+", "zoom in (+)", header);
  const zoomFit = button("fit", "fit the whole head (0)", header);
  const status = el("span", "cb-status", header);
  status.setAttribute("aria-live", "polite");
  const progress = el("progress", "cb-progress", header);
  progress.max = layers.length * nHeads;
  progress.value = 0;
  progress.hidden = thumbsReady;
  progress.setAttribute("aria-label", "thumbnails computed");

  const body = el("div", "cb-body cb-att-body", root);
  const gridPanel = el("div", "cb-att-grid", body);
  gridPanel.tabIndex = 0;
  gridPanel.setAttribute("role", "grid");
  gridPanel.setAttribute("aria-label", "heads: arrows move the head (left/right) and the layer (up/down)");
  const figure = el("div", "cb-figure", body);
  const side = el("div", "cb-side", body);
  const caption = el("div", "cb-caption", side);
  const legend = el("div", "cb-legend", side);

  // ---- thumbnails grid ------------------------------------------------------------------
  const thumbs = new Map<string, HTMLDivElement>();
  const bars = new Map<string, HTMLDivElement>();
  const thumbCanvases: [HTMLCanvasElement, number][] = [];
  const headRow = el("div", "cb-att-row cb-att-colhead", gridPanel);
  el("span", "cb-att-rowlabel", headRow);
  for (let h = 0; h < nHeads; h++) el("span", "cb-att-headlabel", headRow).textContent = String(h);
  layers.forEach((layer, li) => {
    const row = el("div", "cb-att-row", gridPanel);
    row.setAttribute("role", "row");
    el("span", "cb-att-rowlabel", row).textContent = `L${layer}`;
    for (let h = 0; h < nHeads; h++) {
      const cell = el("div", "cb-thumb", row);
      cell.setAttribute("role", "gridcell");
      cell.dataset.layer = String(layer);
      cell.dataset.head = String(h);
      cell.title = `layer ${layer} head ${h}`;
      const c = el("canvas", "", cell);
      el("span", "cb-thumb-h", cell).textContent = String(h);
      bars.set(`${layer}:${h}`, el("div", "cb-thumb-bar", cell));
      thumbs.set(`${layer}:${h}`, cell);
      thumbCanvases.push([c, li * nHeads + h]);
    }
  });
  const thumbLut = () => {
    const lut = markNonFinite(sqrtLut(sequential(isDark(root))), thumbsEnc.nonfinite);
    if (causal) {
      // Causal heads: the blocks above the diagonal are masked (drawn as the background).
      const bg = cssToUint32(getComputedStyle(root).getPropertyValue("--cb-bg").trim() || "#ffffff");
      const bgRgba = new Uint8ClampedArray(new Uint32Array([bg]).buffer);
      lut.set(bgRgba, 0);
    }
    return lut;
  };
  const paintThumbs = (only?: number) => {
    const lut = thumbLut();
    const size = tSide * tSide;
    for (const [c, k] of thumbCanvases) {
      if (only !== undefined && k !== only) continue;
      const codes = thumbCodes.subarray(k * size, (k + 1) * size);
      if (causal) {
        const masked = new Uint8Array(size);
        for (let r = 0; r < tSide; r++) for (let q = 0; q < tSide; q++) masked[r * tSide + q] = q > r ? 0 : Math.max(1, codes[r * tSide + q]);
        paintCodes(c, tSide, tSide, masked, lut);
      } else {
        paintCodes(c, tSide, tSide, codes, lut);
      }
    }
  };

  const scoreOf = (name: string, li: number, h: number): number | null => {
    const v = scores[name]?.[li]?.[h];
    return v === null || v === undefined || !Number.isFinite(v) ? null : v;
  };
  const applyScores = () => {
    const name = scoreSel.value;
    gridPanel.classList.toggle("cb-sorted", !!name && sortBox.checked);
    let lo = Number.POSITIVE_INFINITY;
    let hi = Number.NEGATIVE_INFINITY;
    if (name) {
      layers.forEach((_, li) => {
        for (let h = 0; h < nHeads; h++) {
          const v = scoreOf(name, li, h);
          if (v !== null) {
            lo = Math.min(lo, v);
            hi = Math.max(hi, v);
          }
        }
      });
    }
    const unit = (v: number | null) => {
      if (v === null || !(hi >= lo)) return 0;
      const t = name === "entropy" ? (hi > lo ? (hi - v) / (hi - lo) : 1) : hi > 0 ? Math.max(0, v) / hi : 0;
      return Math.max(0, Math.min(1, t));
    };
    layers.forEach((layer, li) => {
      const order = Array.from({ length: nHeads }, (_, h) => h);
      if (name && sortBox.checked) order.sort((a, b) => unit(scoreOf(name, li, b)) - unit(scoreOf(name, li, a)));
      order.forEach((h, rank) => {
        const key = `${layer}:${h}`;
        const cell = thumbs.get(key) as HTMLDivElement;
        const bar = bars.get(key) as HTMLDivElement;
        const v = name ? scoreOf(name, li, h) : null;
        cell.style.order = String(rank + 1);
        bar.style.width = name ? `${Math.round(unit(v) * 100)}%` : "0";
        cell.title = `layer ${layer} head ${h}${name ? ` · ${SCORE_LABELS[name] ?? name}: ${v === null ? "n/a" : v.toFixed(3)}` : ""}${cell.classList.contains("cb-thumb-reduced") ? " · thumbnail only in this report" : ""}`;
      });
    });
    root.dataset.score = name;
  };

  // ---- heads: fetched on demand, decoded once, cached ---------------------------------------
  const decoded = new Map<string, Head>();
  let cachedBytes = 0;
  const remember = (h: Head) => {
    const key = `${h.layer}:${h.head}`;
    if (decoded.has(key)) return;
    decoded.set(key, h);
    cachedBytes += h.codes.length;
    for (const [k, old] of decoded) {
      if (cachedBytes <= CACHE_BYTES || decoded.size <= 2) break;
      decoded.delete(k);
      cachedBytes -= old.codes.length;
    }
  };
  /** A head of `side` × `side` codes, decoded with `enc`'s scale. */
  const headOfCodes = (layer: number, head: number, codes: Uint8Array, enc: Encoded, side: number, reduced: boolean): Head => ({
    layer, head, codes, lo: enc.lo, scale: enc.scale, n: side, reduced, nonfinite: enc.nonfinite ?? null,
  });
  const fromEncoded = (layer: number, head: number, enc: Encoded, buffers: DataView[] = []): Head =>
    headOfCodes(layer, head, uint8View(enc, buffers), enc, enc.shape[enc.shape.length - 1], false);
  const thumbHead = (layer: number, head: number, reduced = true): Head => {
    const k = layers.indexOf(layer) * nHeads + head;
    const size = tSide * tSide;
    return headOfCodes(layer, head, thumbCodes.subarray(k * size, (k + 1) * size), thumbsEnc, tSide, reduced);
  };
  // A prompt no longer than the thumbnail side sends every head whole with the thumbnails
  // (same codes as fetch-head), so a click draws at once, without asking the kernel.
  const thumbsAreHeads = !long && tSide === n && thumbsReady;
  // a report that switched frames holds every head of the frame (no fetch-head: those
  // replies are of the frame the report was written at)
  const framedEnc = model.get("_heads");
  const framed = framedEnc && "shape" in framedEnc ? uint8View(framedEnc as Encoded) : null;
  const framedHead = (layer: number, head: number): Head => {
    const k = layers.indexOf(layer) * nHeads + head;
    return headOfCodes(layer, head, (framed as Uint8Array).subarray(k * n * n, (k + 1) * n * n), framedEnc as Encoded, n, false);
  };
  const headOf = (layer: number, head: number): Head | undefined =>
    framed ? framedHead(layer, head) : decoded.get(`${layer}:${head}`) ?? (thumbsAreHeads ? thumbHead(layer, head, false) : undefined);
  let included: Set<string> | null = null; // null: every head can be fetched
  const markReduced = (key: string) => {
    thumbs.get(key)?.classList.add("cb-thumb-reduced");
  };

  /** A long prompt's head: its overview now, tiles added as the view zooms in. */
  const fromOverview = (layer: number, head: number, enc: Encoded, buffers: DataView[] = []): Head => {
    const h = fromEncoded(layer, head, enc, buffers);
    h.tiled = new TiledHead(n, h.codes, h.n, tileSize);
    return h;
  };
  const init = model.get("_initial");
  let current: Head = init.overview
    ? fromOverview(layers[init.layer], init.head, init.overview)
    : init.pattern
      ? fromEncoded(layers[init.layer], init.head, init.pattern)
      : (headOf(layers[init.layer], init.head) as Head); // a switched frame: from its heads
  remember(current);
  /** Code of cell (query i, key j) of the current head (its tile, or its overview block). */
  const codeAt = (h: Head, i: number, j: number) => (h.tiled ? h.tiled.code(i, j) : h.codes[i * h.n + j]);

  // ---- zoomed heatmap -------------------------------------------------------------------------
  const tip = el("div", "cb-tip", figure);
  tip.hidden = true;
  const heat = new ZoomHeatmap(figure, {
    size: 360,
    axes: { row: "query", col: "key" },
    onHover: (cell) => {
      if (!cell) {
        tip.hidden = true;
        hover(link, { hover_token: null });
        return;
      }
      tip.hidden = false;
      if (current.reduced) {
        const [q0, q1] = blockRange(cell.row);
        const [k0, k1] = blockRange(cell.col);
        tip.textContent = `queries ${q0}–${q1} → keys ${k0}–${k1}: mass ${fmtP(valueOf(current, current.codes[cell.row * current.n + cell.col]))} (thumbnail)`;
        return;
      }
      const p = valueOf(current, codeAt(current, cell.row, cell.col));
      tip.textContent = `#${cell.row} ${JSON.stringify(tokens[cell.row])} → #${cell.col} ${JSON.stringify(tokens[cell.col])}: ${fmtP(p)}`;
      const t = current.tiled;
      if (t && !t.full(cell.row, cell.col)) {
        const [q0, q1] = t.blockRange(cell.row);
        const [k0, k1] = t.blockRange(cell.col);
        tip.textContent += ` (pooled: ${pool} over queries ${q0}–${q1} × keys ${k0}–${k1}; zoom in for full resolution)`;
      }
      if (link.get("hover_token") !== cell.row) hover(link, { hover_token: cell.row });
    },
    onClick: (cell) => {
      if (current.reduced) return;
      toggleLock(cell.row);
      if (explainPanel) {
        explained = { layer: current.layer, head: current.head, row: cell.row, col: cell.col };
        markExplained();
        void explainPanel.explain(current.layer, current.head, cell.row, cell.col);
      }
    },
    onZoom: () => {
      updateStatus();
      scheduleTiles();
    },
  }, signal);
  heat.canvas.setAttribute("aria-label", "attention pattern");
  const colorBar = new ColorBar(figure, "attention weight");
  let figureMode = false; // drawing a figure: no hover marks, the whole head
  const blockRange = (b: number): [number, number] => [Math.floor((b * n) / tSide), Math.floor(((b + 1) * n) / tSide) - 1];

  const matrixOf = (h: Head): MatrixData => ({
    rows: h.tiled ? n : h.n,
    cols: h.tiled ? n : h.n,
    codes: h.codes,
    sample: h.tiled?.sample,
    lut: markNonFinite(scaleSel.value === "sqrt" ? sqrtLut(sequential(isDark(root))) : sequential(isDark(root)), h.nonfinite),
    lowerOnly: causal,
    rowLabel: h.reduced ? (i) => `${blockRange(i)[0]}–${blockRange(i)[1]}` : (i) => `${i} ${labelOf(tokens[i])}`,
    colLabel: h.reduced ? (i) => `${blockRange(i)[0]}–${blockRange(i)[1]}` : (i) => `${i} ${labelOf(tokens[i])}`,
  });

  const themeColors = () => {
    const cs = getComputedStyle(root);
    const v = (name: string, dflt: string) => cs.getPropertyValue(name).trim() || dflt;
    heat.setColors({ bg: v("--cb-bg", "#ffffff"), fg: v("--cb-fg", "#1f2328"), muted: v("--cb-muted", "#656d76"), accent: v("--cb-active", "#cf222e") });
  };

  // The cell whose explanation the panel shows, outlined while its head is drawn.
  let explained: { layer: number; head: number; row: number; col: number } | null = null;
  const markExplained = () => {
    const e = explained;
    const on = e !== null && e.layer === current.layer && e.head === current.head && !current.reduced && !figureMode;
    heat.setCellMark(on ? { row: e.row, col: e.col } : null);
    root.dataset.explained = on ? `${e.row},${e.col}` : "";
  };
  let shownKey = "";
  const drawHeat = (keepView: boolean) => {
    const data = matrixOf(current);
    heat.setData(data, keepView);
    const top = current.nonfinite === 255 ? 254 : 255;
    const short = (v: number) => (Number.isFinite(v) ? String(Number(v.toFixed(3))) : fmtP(v));
    colorBar.set(data.lut, short(current.lo), short(current.lo + top * current.scale), `attention weight${scaleSel.value === "sqrt" ? " (√ colour scale)" : ""}${current.reduced ? ", block mean" : ""}`);
    const key = `${current.layer}:${current.head}`;
    for (const [k, cell] of thumbs) cell.classList.toggle("cb-thumb-selected", k === key);
    const cell = thumbs.get(key);
    if (shownKey !== key && cell) {
      // Scroll the grid only (never the notebook) so the selected thumbnail is in view.
      const top = cell.offsetTop - 16;
      if (top < gridPanel.scrollTop || top + cell.offsetHeight + 16 > gridPanel.scrollTop + gridPanel.clientHeight) {
        gridPanel.scrollTop = Math.max(0, top - gridPanel.clientHeight / 2);
      }
    }
    shownKey = key;
    heat.canvas.setAttribute("aria-label", `attention pattern of layer ${current.layer} head ${current.head}${current.reduced ? " (thumbnail)" : ""}`);
    root.dataset.layer = String(current.layer);
    if (frameSteps.length && frame >= 0) root.dataset.step = String(frameSteps[frame]);
    root.dataset.head = String(current.head);
    root.dataset.reduced = String(current.reduced);
    markExplained();
    updateStatus();
  };

  const updateStatus = () => {
    const z = heat.canvas.dataset.zoom ?? "1.00";
    const parts = [`L${current.layer} H${current.head}`, `${n} tokens`];
    if (Number(z) > 1.001) parts.push(`zoom ${Number(z).toFixed(1)}×${heat.atMaxZoom ? " (max)" : ""}`);
    zoomIn.disabled = heat.atMaxZoom;
    zoomIn.title = heat.atMaxZoom ? "maximum zoom reached" : "zoom in (+)";
    root.dataset.scale = scaleSel.value;
    if (current.reduced) parts.push(`not in this report at full resolution: ${tSide}×${tSide} thumbnail`);
    const t = current.tiled;
    if (t) {
      const blk = Math.ceil(n / t.side);
      parts.push(`pooled overview: ${pool} of each ${blk}×${blk}-token block`);
      parts.push(t.tiles.size ? `${t.tiles.size} tile${t.tiles.size > 1 ? "s" : ""} at full resolution` : "zoom in for full resolution");
      if (tilesIncluded && !tilesIncluded.has(`${current.layer}:${current.head}`)) parts.push("full resolution not in this report");
      else if (tilesIncluded && (tileRegion[0] > 0 || tileRegion[1] < n)) parts.push(`full resolution in this report: queries ${tileRegion[0]}–${tileRegion[1] - 1}`);
    }
    if (frameSteps.length && frame >= 0) {
      const want = model.get("_frame_wanted");
      parts.push(`step ${frameSteps[frame]}`);
      if (typeof want === "number" && want !== frame) parts.push(`step ${frameSteps[want]} is not in this report: nearest kept step shown`);
    }
    if (!progress.hidden) parts.push(`thumbnails ${progress.value}/${progress.max}`);
    if (included) parts.push(`${included.size} of ${layers.length * nHeads} heads ${long ? "with their overview" : "at full resolution"} in this report (▨ = thumbnail only)`);
    status.textContent = parts.join(" · ");
    root.dataset.zoom = z;
  };

  // ---- explain panel (views/explain_panel.ts): why a clicked cell has its score -----------------
  const onClose = () => {
    explained = null;
    markExplained();
  };
  const explainPanel = model.get("explainable")
    ? new ExplainPanel(fetcher, { tokens, target: model.get("explain_target") ?? "", select: (v) => select(link, v), signal, onClose })
    : null;
  if (explainPanel) body.insertBefore(explainPanel.el, side);
  /** Live, a click on a cell waits for the kernel to explain it (a few hundred ms under load).
   * After a head is drawn, fetch the explanations of the cells a click most likely lands on
   * (every cell of a short prompt, else each query's most-attended keys), so it draws from
   * the panel's cache. */
  let aheadFor = "";
  const warmExplanations = () => {
    const h = current;
    const key = `${h.layer}:${h.head}`;
    if (!explainPanel || aheadFor === key || long || h.reduced || h.tiled || !prefetchAllowed(model)) return;
    aheadFor = key;
    const t0 = performance.now();
    root.dataset.explainAhead = "";
    const rows = aheadCells(h.n, (q, k) => h.codes[q * h.n + k], activeToken());
    void explainPanel.prefetch(h.layer, h.head, rows).then((kept) => {
      if (kept < 0) return; // another head took over
      root.dataset.explainAhead = key;
      root.dataset.explainAheadCells = String(kept);
      root.dataset.explainAheadMs = (performance.now() - t0).toFixed(0);
    });
  };
  // ---- end explain panel -------------------------------------------------------------------------

  // ---- tokens ----------------------------------------------------------------------------------
  const toggleLock = (i: number) => select(link, { token: link.get("token") === i ? null : i });
  const strip = tokenStrip(tokens, model.get("image") as ImageInfo, {
    hover: (i) => hover(link, { hover_token: i }),
    click: (i) => toggleLock(i),
  }, signal);
  side.appendChild(strip.el);

  const activeToken = (): number | null => {
    const t = figureMode ? link.get("token") : (link.get("token") ?? link.get("hover_token"));
    return t === null || t === undefined || t < 0 || t >= n ? null : t;
  };

  const rgba = (rgb: number[], a: number) => `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${a.toFixed(3)})`;
  const drawTokens = () => {
    const i = activeToken();
    const locked = link.get("token");
    strip.mark(i, "cb-token-active");
    root.dataset.token = i === null ? "" : String(i);
    root.dataset.locked = String(locked !== null && locked !== undefined);
    heat.setMarks(i === null || current.reduced ? null : i, i === null || current.reduced ? null : i);
    legend.replaceChildren();
    caption.classList.toggle("cb-help", i === null || current.reduced);
    if (i === null || current.reduced) {
      strip.paintWith(null);
      caption.textContent = current.reduced
        ? "This head is a thumbnail in this report: open the notebook for its full pattern."
        : "Hover a token (or a heatmap row) to see where it looks and who looks at it; click to lock, Escape to unlock.";
      return;
    }
    const dark = isDark(root);
    const mode = modeSel.value as Mode;
    const rowRgb = dark ? ROW_RGB.dark : ROW_RGB.light;
    const colRgb = dark ? COL_RGB.dark : COL_RGB.light;
    const h = current;
    strip.paintWith((j) => {
      const useRow = mode === "row" || (mode === "both" && j <= i);
      const code = useRow ? codeAt(h, i, j) : codeAt(h, j, i);
      const p = valueOf(current, code);
      if (Number.isNaN(p)) return NAN_PAINT;
      if (!(p > 0)) return null;
      const a = Math.min(1, Math.sqrt(p));
      return { bg: rgba(useRow ? rowRgb : colRgb, a), fg: a > 0.55 ? "#fff" : "" };
    });
    caption.textContent = `Token #${i} ${JSON.stringify(tokens[i])} in L${current.layer} H${current.head}${locked === i && !figureMode ? " · locked (click again or Escape to unlock)" : ""}: where it attends`;
    const key = (rgb: number[], text: string) => {
      const k = el("span", "cb-legend-key", legend);
      el("span", "cb-legend-swatch", k).style.background = rgba(rgb, 0.85);
      k.append(text);
    };
    if (mode !== "col") key(rowRgb, mode === "both" ? "where it looks (earlier tokens)" : "where it looks");
    if (mode !== "row") key(colRgb, mode === "both" ? "who looks at it (later tokens)" : "who looks at it");
  };

  // ---- showing a head ----------------------------------------------------------------------------
  let clickT0: number | null = null;
  let wanted = "";
  const show = async () => {
    // Follows head selections only: a layer chosen without a head (a neuron or an MLP layer
    // clicked elsewhere) leaves the head shown as it is.
    const layer = link.get("layer");
    const head = link.get("head");
    const showCurrent = () => {
      layerSel.value = String(current.layer);
      headSel.value = String(current.head);
    };
    if (layer === null || layer === undefined || head === null || head === undefined || !layers.includes(layer) || head < 0 || head >= nHeads) {
      showCurrent();
      return;
    }
    const key = `${layer}:${head}`;
    wanted = key;
    const t0 = clickT0;
    clickT0 = null;
    if (current.layer === layer && current.head === head && !current.reduced) {
      showCurrent(); // the head is drawn already (opened at it): the menus must say so too
      return;
    }
    let h = headOf(layer, head);
    if (!h) {
      if (included && !included.has(key)) {
        h = thumbHead(layer, head);
      } else {
        status.textContent = `loading L${layer} H${head}…`;
        try {
          const f0 = performance.now();
          const { reply, buffers } = await fetcher.get({ kind: long ? "fetch-overview" : "fetch-head", layer, head });
          root.dataset.lastFetchMs = (performance.now() - f0).toFixed(1);
          h = long ? fromOverview(layer, head, reply.overview as Encoded, buffers) : fromEncoded(layer, head, reply.pattern as Encoded, buffers);
          remember(h);
        } catch (err) {
          if (wanted !== key) return;
          const msg = String((err as Error).message ?? err);
          if (/not included in the report/.test(msg)) {
            markReduced(key);
            h = thumbHead(layer, head);
          } else {
            // The drawing still shows `current`: so do the selectors, and the status says why.
            showCurrent();
            status.textContent = `L${layer} H${head} could not be loaded: ${msg} Still showing L${current.layer} H${current.head}.`;
            root.classList.add("cb-error");
            return;
          }
        }
      }
    }
    if (wanted !== key) return; // a newer selection won the race
    root.classList.remove("cb-error");
    current = h;
    showCurrent();
    drawHeat(true);
    drawTokens();
    if (t0 !== null) root.dataset.lastMs = (performance.now() - t0).toFixed(1);
    root.dataset.shown = String(Number(root.dataset.shown ?? 0) + 1);
    prefetch(layer, head);
    scheduleTiles();
    warmExplanations();
  };

  // ---- long prompts: full-resolution tiles of the visible region ------------------------------
  let tilesIncluded: Set<string> | null = null; // report: heads whose tiles it embeds
  let tileRegion: [number, number] = [0, n]; // report: the query rows it embeds tiles of
  let tileTimer = 0;
  let tilePaint = 0;
  const scheduleTiles = () => {
    if (!long) return;
    window.clearTimeout(tileTimer);
    tileTimer = window.setTimeout(loadTiles, 60);
  };
  const repaintTiles = () => {
    if (tilePaint) return;
    tilePaint = requestAnimationFrame(() => {
      tilePaint = 0;
      drawHeat(true);
      drawTokens();
    });
  };
  const loadTiles = () => {
    const h = current;
    const t = h.tiled;
    const v = heat.visibleCells();
    if (!t || !v || h.reduced || n <= t.side) return;
    if (tilesIncluded && !tilesIncluded.has(`${h.layer}:${h.head}`)) return;
    const c1 = causal ? Math.min(v.c1, v.r1) : v.c1;
    if ((v.r1 - v.r0) * (c1 - v.c0) > MAX_TILE_CELLS) return; // the overview is as fine as the screen
    const r0 = Math.max(v.r0, tileRegion[0]);
    const r1 = Math.min(v.r1, tileRegion[1]);
    if (r1 <= r0) return;
    const t0 = performance.now();
    for (const req of tilesFor(h.layer, h.head, r0, r1, v.c0, c1, n, tileSize, causal)) {
      const tkey = `${req.q0 / tileSize}:${req.k0 / tileSize}`;
      if (t.tiles.has(tkey) || t.missing.has(tkey)) continue;
      fetcher.get({ ...req }).then(({ reply, buffers }) => {
        const enc = reply.tile as Encoded;
        t.add({ q0: req.q0, k0: req.k0, rows: enc.shape[0], cols: enc.shape[1], codes: uint8View(enc, buffers) });
        root.dataset.tiles = String(t.tiles.size);
        if (current === h) {
          repaintTiles();
          requestAnimationFrame(() => { root.dataset.lastTileMs = (performance.now() - t0).toFixed(1); });
        }
      }, (err) => {
        if (/not included in the report/.test(String((err as Error).message ?? err))) t.missing.add(tkey);
      });
    }
  };

  // ---- long prompts: thumbnails and their scores, head by head, with a progress bar -------------
  const loadThumbs = async () => {
    const size = tSide * tSide;
    let done = 0;
    for (let li = 0; li < layers.length; li++) {
      for (let h = 0; h < nHeads; h++) {
        if (signal.aborted) return;
        try {
          const { reply, buffers } = await fetcher.get({ kind: "fetch-thumb", layer: layers[li], head: h });
          thumbCodes.set(uint8View(reply.thumb as Encoded, buffers).subarray(0, size), (li * nHeads + h) * size);
          paintThumbs(li * nHeads + h);
          for (const [name, v] of Object.entries((reply.scores ?? {}) as Record<string, number | null>)) {
            if (scores[name]) scores[name][li][h] = v;
          }
        } catch {
          // a report that left this thumbnail out: the cell stays blank
        }
        done += 1;
        progress.value = done;
        root.dataset.thumbs = String(done);
      }
      applyScores();
      updateStatus();
    }
    progress.hidden = true;
    root.dataset.thumbsDone = "true";
    updateStatus();
  };
  /** Live, a head click waits for a kernel round trip (about 100 ms in JupyterLab). When every
   * head fits in WARM_BYTES, fetch them all after the first paint, a layer per message (so a
   * click waits behind at most one), and clicks draw from the cache. */
  const warmHeads = async () => {
    const layerBytes = nHeads * (causal ? (n * (n + 1)) / 2 : n * n);
    if (long || thumbsAreHeads || layerBytes * layers.length > WARM_BYTES || layerBytes > WARM_BYTES / 4) return;
    const t0 = performance.now();
    for (const layer of layers) {
      if (signal.aborted) return;
      let got: Fetched;
      try {
        got = await fetcher.get({ kind: "fetch-layer", layer });
      } catch {
        return; // the kernel is gone: clicks say so themselves
      }
      const enc = got.reply.patterns as Encoded;
      const codes = uint8View(enc, got.buffers);
      for (let head = 0; head < nHeads; head++) remember(headOfCodes(layer, head, codes.subarray(head * n * n, (head + 1) * n * n), enc, n, false));
    }
    root.dataset.warmMs = (performance.now() - t0).toFixed(0);
  };
  /** Ask for a head now (cached by the fetcher) unless it is decoded or left out of a report. */
  const request = (layer: number, head: number) => {
    const key = `${layer}:${head}`;
    if (headOf(layer, head) || (included && !included.has(key)) || !layers.includes(layer) || head < 0 || head >= nHeads) return;
    fetcher.get({ kind: long ? "fetch-overview" : "fetch-head", layer, head }).catch(() => undefined);
  };
  const prefetch = (layer: number, head: number) => {
    const next = head + 1 < nHeads ? { layer, head: head + 1 } : null;
    if (long || !next || headOf(next.layer, next.head) || (included && !included.has(`${next.layer}:${next.head}`))) return;
    fetcher.get({ kind: "fetch-head", ...next }).catch(() => undefined);
  };

  const moveHead = (dl: number, dh: number) => {
    let li = layers.indexOf(current.layer) + dl;
    let h = current.head + dh;
    if (h >= nHeads) {
      h = 0;
      li += 1;
    } else if (h < 0) {
      h = nHeads - 1;
      li -= 1;
    }
    li = Math.max(0, Math.min(layers.length - 1, li));
    request(layers[li], h);
    select(link, { layer: layers[li], head: h });
  };
  const moveToken = (d: number) => {
    const t = activeToken() ?? (d > 0 ? -1 : n);
    const next = Math.max(0, Math.min(n - 1, t + d));
    select(link, { token: next });
    strip.reveal(next);
    heat.reveal(next, next);
  };

  // ---- events ------------------------------------------------------------------------------------
  gridPanel.addEventListener("click", (ev) => {
    const cell = (ev.target as HTMLElement).closest?.(".cb-thumb") as HTMLElement | null;
    if (!cell) return;
    clickT0 = performance.now();
    const layer = Number(cell.dataset.layer);
    const head = Number(cell.dataset.head);
    request(layer, head); // before the selection's own message, so the kernel answers it first
    select(link, { layer, head });
  }, { signal });
  layerSel.addEventListener("change", () => select(link, { layer: Number(layerSel.value), head: current.head }), { signal });
  headSel.addEventListener("change", () => select(link, { layer: current.layer, head: Number(headSel.value) }), { signal });
  scoreSel.addEventListener("change", applyScores, { signal });
  sortBox.addEventListener("change", applyScores, { signal });
  modeSel.addEventListener("change", drawTokens, { signal });
  scaleSel.addEventListener("change", () => drawHeat(true), { signal });
  zoomIn.addEventListener("click", () => heat.zoom(2), { signal });
  zoomOut.addEventListener("click", () => heat.zoom(0.5), { signal });
  zoomFit.addEventListener("click", () => heat.fit(), { signal });
  gridPanel.addEventListener("keydown", (ev) => {
    const moves: Record<string, [number, number]> = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    const mv = moves[ev.key];
    if (!mv) return;
    ev.preventDefault();
    ev.stopPropagation();
    clickT0 = performance.now();
    moveHead(mv[0], mv[1]);
  }, { signal });
  root.addEventListener("keydown", (ev) => {
    if ((ev.target as HTMLElement).tagName === "SELECT" || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const k = ev.key;
    if (k === "Escape") {
      // the click that opened the panel also locked its query: Escape undoes both
      if (explainPanel?.isOpen) explainPanel.close();
      select(link, { token: null });
    }
    else if (k === "ArrowLeft") moveToken(-1);
    else if (k === "ArrowRight") moveToken(1);
    else if (k === "ArrowUp") moveHead(0, -1);
    else if (k === "ArrowDown") moveHead(0, 1);
    else if (k === "PageUp") moveHead(-1, 0);
    else if (k === "PageDown") moveHead(1, 0);
    else if (k === "+" || k === "=") heat.zoom(2);
    else if (k === "-") heat.zoom(0.5);
    else if (k === "0") heat.fit();
    else return;
    ev.preventDefault();
  }, { signal });

  let showQueued = false;
  const scheduleShow = () => {
    // layer and head change one after the other: show once, after both.
    if (showQueued) return;
    showQueued = true;
    queueMicrotask(() => {
      showQueued = false;
      void show();
    });
  };
  const offSel = onSelection(link, ["layer", "head"], scheduleShow);
  const offTok = onSelection(link, ["token", "hover_token"], drawTokens);
  const redraw = () => {
    themeColors();
    paintThumbs();
    drawHeat(true);
    drawTokens();
  };
  const offTheme = followTheme(model as AnyModel, root, redraw);
  let liveView = heat.transform;
  figureHooks(root, {
    title: () => `Attention · layer ${current.layer}, head ${current.head}${frameSteps.length && frame >= 0 ? ` · step ${frameSteps[frame]}` : ""}${current.reduced ? " (thumbnail)" : ""}`,
    enter: () => {
      figureMode = true;
      markExplained(); // figures show the data, not the click
      liveView = heat.transform;
      heat.fit();
      drawTokens();
    },
    exit: () => {
      figureMode = false;
      markExplained();
      heat.setTransform(liveView);
      drawTokens();
    },
  });

  themeColors();
  paintThumbs();
  applyScores();
  drawHeat(false);
  drawTokens();
  root.dataset.firstPaintMs = performance.now().toFixed(0);

  // ---- frames in a report: follow the view that picks them (live, Python switches frames) ----
  async function followFrames(): Promise<void> {
    const ref = follow.model;
    const trait = follow.trait;
    const key = follow.key;
    if (!(model as { offline?: boolean }).offline || !ref || !trait || !key || !frameSteps.length) return;
    let src: AnyModel;
    try {
      src = await resolveModel(props, ref);
    } catch {
      return; // the followed view is not on this page: this view stays at its frame
    }
    if (signal.aborted) return;
    let asked = 0;
    const onPick = async () => {
      const want = (src.get(trait) as Record<string, unknown> | undefined)?.[key];
      if (typeof want !== "number" || want < 0 || want >= frameSteps.length) return;
      const kept = keptFrames ?? frameSteps.map((_, i) => i);
      const got = kept.reduce((a, b) => (Math.abs(b - want) < Math.abs(a - want) ? b : a), kept[0] ?? want);
      const m = model as unknown as AnyModel;
      m.set("_frame_wanted", want);
      if (got === frame) {
        updateStatus();
        root.dataset.frameWanted = String(frameSteps[want]);
        return;
      }
      const ticket = ++asked;
      status.textContent = `loading step ${frameSteps[got]}…`;
      let f: Fetched;
      try {
        f = await fetcher.get({ kind: "fetch-frame", frame: got });
      } catch (err) {
        status.textContent = `step ${frameSteps[got]} could not be loaded: ${String((err as Error).message ?? err)} Still showing step ${frameSteps[frame]}.`;
        return;
      }
      if (ticket !== asked || signal.aborted) return; // a newer click won
      const r = f.reply as Record<string, unknown>;
      const withData = (enc: Encoded): Encoded => ({ ...enc, data: f.buffers[enc.data as number] });
      // the state set_attention sets live; `_revision` redraws the view from it (index.ts)
      m.set("causal", r.causal);
      m.set("scores", r.scores);
      m.set("_thumbs", withData(r._thumbs as Encoded));
      m.set("_heads", r._heads ? withData(r._heads as Encoded) : {});
      m.set("_initial", { layer: init.layer, head: init.head });
      m.set("_frame", got);
      m.set("_revision", ((m.get("_revision") as number) ?? 0) + 1);
    };
    const handler = () => void onPick();
    src.on(`change:${trait}`, handler);
    offFollow = () => src.off(`change:${trait}`, handler);
  }

  // Which heads a static report embeds (live, every head); never blocks the first paint.
  fetcher.get({ kind: "fetch-included" }).then(({ reply }) => {
    if (Array.isArray(reply.frames)) keptFrames = reply.frames as number[];
    if (reply.all || framed) return;
    tilesIncluded = new Set(((reply.tiles ?? []) as [number, number][]).map(([l, h]) => `${l}:${h}`));
    if (Array.isArray(reply.region)) tileRegion = reply.region as [number, number];
    included = new Set((reply.heads as [number, number][]).map(([l, h]) => `${l}:${h}`));
    for (const key of thumbs.keys()) if (!included.has(key)) markReduced(key);
    root.dataset.included = String(included.size);
    applyScores();
    updateStatus();
  }, () => undefined);
  await show();
  void followFrames();
  if (!thumbsReady) void loadThumbs(); // after the first paint; clicks interleave with it
  else if (!(model as { offline?: boolean }).offline) void warmHeads();
  warmExplanations();

  return () => {
    abort.abort();
    offFollow();
    window.clearTimeout(tileTimer);
    offSel();
    offTok();
    offTheme();
    fetcher.dispose();
    root.remove();
  };
}
