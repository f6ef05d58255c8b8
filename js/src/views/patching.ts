// Patching view: what patching each site recovers (1 = clean, 0 = corrupted) as a heatmap.
// Per-position sites: positions (tokens, clean → corrupted where they differ) × layers;
// per-head sites: layers × heads (heads_pos: positions × layers for one head); neurons:
// layers × neurons. Hover shows normalized and raw values; click selects on the link.
// Between two images (ViT): both images as patch grids, and per-position sites as one patch
// grid per layer (CLS beside it) over the source image, each patch coloured by its value.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { cssColor } from "../colormaps";
import { el } from "../dom";
import { cellAt, paintMatrix } from "../heatmap";
import { onSelection, resolveLink, select } from "../link";
import { type ImageInfo, PatchGrid } from "../patches";
import { followTheme, isDark } from "../theme";
import type { Encoded, Selection } from "../types";
import { divergingFor, fmt } from "./attribution";

interface PatchingState {
  site: string;
  method: string;
  direction: string;
  metric: string;
  axes: string[];
  layers: number[];
  positions: number[];
  heads: number[];
  clean_tokens: string[];
  corrupted_tokens: string[];
  clean_value: number;
  corrupted_value: number;
  first_diff: number;
  notes: string[];
  correlation: number | null;
  completeness_error: number | null;
  kv_groups: Record<string, number[]>;
  image: ImageInfo | Record<string, never>; // image pairs: the clean image ({} for text)
  corrupted_image: ImageInfo | Record<string, never>;
  n_pairs: number;
  _values: Encoded;
  _raw: Encoded;
  theme: string;
  link: string;
}

/** Symmetric colour range: the largest |value|, at least 1 so that "clean" is on the bar. */
export function patchRange(values: ArrayLike<number>): number {
  let m = 1;
  for (let i = 0; i < values.length; i++) if (Number.isFinite(values[i])) m = Math.max(m, Math.abs(values[i]));
  return m;
}

/** A token as shown on an axis: visible whitespace, never empty. */
export function showToken(t: string): string {
  const s = t.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/^ /, "␣");
  return s.length ? s : "∅";
}

/** The grid the view draws, whatever the site: rows × cols with a value index per cell. */
export interface Layout {
  rows: number;
  cols: number;
  rowKind: "position" | "layer";
  colKind: "layer" | "head" | "neuron";
  /** index into the flat values array of cell (r, c) for head `h` (heads_pos only). */
  index(r: number, c: number, h: number): number;
}

export function layoutFor(axes: string[], shape: number[]): Layout {
  const key = axes.join(",");
  if (key === "layer,position") {
    const [L, P] = shape;
    return { rows: P, cols: L, rowKind: "position", colKind: "layer", index: (r, c) => c * P + r };
  }
  if (key === "layer,position,head") {
    const [L, P, H] = shape;
    return { rows: P, cols: L, rowKind: "position", colKind: "layer", index: (r, c, h) => (c * P + r) * H + h };
  }
  if (key === "layer,neuron") {
    const [, N] = shape;
    return { rows: shape[0], cols: N, rowKind: "layer", colKind: "neuron", index: (r, c) => r * N + c };
  }
  const [, H] = shape;
  return { rows: shape[0], cols: H, rowKind: "layer", colKind: "head", index: (r, c) => r * H + c };
}

/** Display pixels per patch side of each layer's grid: as large as fits ~720 px, 10..28. */
export function mapCell(nLayers: number, gridCols: number): number {
  return Math.max(10, Math.min(28, Math.floor((720 / Math.max(nLayers, 1) - 60) / Math.max(gridCols, 1))));
}

export async function render(props: RenderProps<PatchingState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const values = decode(model.get("_values")).data;
  const shape = model.get("_values").shape;
  const raw = decode(model.get("_raw")).data;
  const axes = model.get("axes");
  const layers = model.get("layers");
  const positions = model.get("positions");
  const heads = model.get("heads");
  const clean = model.get("clean_tokens");
  const corrupted = model.get("corrupted_tokens");
  const firstDiff = model.get("first_diff");
  const site = model.get("site");
  const kv = model.get("kv_groups");
  const lay = layoutFor(axes, shape);
  const perHeadPos = axes.length === 3;
  const nHeads = perHeadPos ? shape[2] : 0;
  const range = patchRange(values);
  const image = model.get("image") as ImageInfo;
  const isImage = !!(image && image.grid);
  // An image result's per-position sites: one patch grid per layer instead of the heatmap.
  const multiples = isImage && lay.rowKind === "position";

  // Pick the head of the strongest cell first (heads_pos).
  let head = 0;
  if (perHeadPos) {
    let best = -1;
    for (let i = 0; i < values.length; i++) {
      const a = Math.abs(values[i]);
      if (a > best) {
        best = a;
        head = i % nHeads;
      }
    }
  }

  const cellW = lay.colKind === "neuron" ? Math.max(1, Math.floor(720 / lay.cols)) : Math.max(10, Math.min(32, Math.floor(480 / Math.max(lay.cols, 1))));
  const cellH = lay.rowKind === "position" ? 18 : Math.max(8, Math.min(18, Math.floor(480 / Math.max(lay.rows, 1))));
  const plotW = Math.min(lay.cols * cellW, 720);

  const root = el("div", "cb-root cb-patch", host);
  root.tabIndex = 0;
  root.dataset.site = site;
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = model.get("method") === "exact" ? "Activation patching" : model.get("method") === "ig" ? "Integrated-gradients patching" : "Attribution patching";
  el("span", "cb-patch-desc", header).textContent = `${site} · ${model.get("direction")} · ${model.get("metric")}`;
  const status = el("span", "cb-status", header);
  const parts = [`clean ${fmt(model.get("clean_value"))} = 1`, `corrupted ${fmt(model.get("corrupted_value"))} = 0`];
  const r = model.get("correlation");
  if (r !== null && r !== undefined) parts.push(`r(exact) ${r.toFixed(3)}`);
  const ce = model.get("completeness_error");
  if (ce !== null && ce !== undefined) parts.push(`completeness error ${ce.toExponential(1)}`);
  status.textContent = parts.join(" · ");
  let headSel: HTMLSelectElement | null = null;
  if (perHeadPos) {
    headSel = el("select", "cb-select cb-patch-head", header);
    headSel.setAttribute("aria-label", "head");
    for (let h = 0; h < nHeads; h++) headSel.add(new Option(`head ${heads[h] ?? h}`, String(h)));
    headSel.value = String(head);
  }

  const body = el("div", "cb-body", root);
  const figure = el("div", "cb-figure cb-patch-figure", body);
  const denoise = model.get("direction") !== "noise";
  const nPairs = model.get("n_pairs") ?? 1;
  const pairGrids: PatchGrid[] = [];
  const maps: PatchGrid[] = [];
  if (isImage) {
    const pair = el("div", "cb-pm-pair", figure);
    const cell = mapCell(2, image.grid[1]);
    for (const [which, info, toks] of [["clean", image, clean], ["corrupted", model.get("corrupted_image") as ImageInfo, corrupted]] as const) {
      if (!info || !info.grid) continue;
      const item = el("div", `cb-pm-item cb-pm-${which}`, pair);
      el("div", "cb-pm-label", item).textContent = nPairs > 1 ? `${which} image (pair 1 of ${nPairs})` : `${which} image`;
      const g = new PatchGrid(toks, info, {
        hover: (i) => hoverToken(i),
        click: (i) => select(link, { token: i }),
      }, signal, cell);
      item.appendChild(g.el);
      pairGrids.push(g);
    }
  }
  if (multiples) {
    const src = denoise ? "clean" : "corrupted";
    const mean = nPairs > 1 ? `, the mean over all ${nPairs} pairs` : "";
    el("div", "cb-pm-caption", figure).textContent = `Each layer's patch grid over the ${src} image (the source of the patched activations): colour = what patching that patch at that layer recovers${mean}`;
    const wrap = el("div", "cb-pm-maps", figure);
    const srcImage = denoise ? image : (model.get("corrupted_image") as ImageInfo);
    const cell = mapCell(lay.cols, image.grid[1]);
    for (let c = 0; c < lay.cols; c++) {
      const item = el("div", "cb-pm-item cb-pm-layer", wrap);
      item.dataset.layer = String(layers[c]);
      el("div", "cb-pm-label", item).textContent = `layer ${layers[c]}`;
      const g = new PatchGrid(clean, srcImage, {
        hover: (i) => hoverMap(c, i),
        click: (i) => {
          const rr = positions.indexOf(i);
          if (rr >= 0) select(link, selectionOf(rr, c));
        },
      }, signal, cell);
      item.appendChild(g.el);
      maps.push(g);
    }
  }
  const grid = el("div", "cb-patch-grid", figure);
  grid.hidden = multiples;
  grid.style.gridTemplateColumns = `auto ${plotW}px`;
  el("div", "cb-patch-corner", grid).textContent = lay.rowKind === "position" ? "token \\ layer" : `layer \\ ${lay.colKind}`;
  const colAxis = el("div", "cb-patch-caxis", grid);
  colAxis.style.width = `${plotW}px`;
  const colLabel = (c: number): string => {
    if (lay.colKind === "layer") return String(layers[c]);
    if (lay.colKind === "head") return String(heads[c] ?? c);
    return String(c);
  };
  const every = lay.colKind === "neuron" ? 256 : plotW / lay.cols >= 14 ? 1 : 2;
  for (let c = 0; c < lay.cols; c += every) {
    const s = el("span", "", colAxis);
    s.style.left = `${(c / lay.cols) * plotW}px`;
    s.style.width = `${Math.max(plotW / lay.cols, 1) * (lay.colKind === "neuron" ? 1 : every)}px`;
    s.textContent = colLabel(c);
  }
  const rowAxis = el("div", "cb-patch-raxis", grid);
  const rowEls: HTMLElement[] = [];
  for (let rr = 0; rr < lay.rows; rr++) {
    const row = el("div", "cb-patch-rlabel", rowAxis);
    row.style.height = `${cellH}px`;
    row.style.lineHeight = `${cellH}px`;
    if (lay.rowKind === "position") {
      const p = positions[rr] ?? rr;
      el("span", "cb-patch-pos", row).textContent = String(p);
      const a = clean[p] ?? "";
      const b = corrupted[p] ?? "";
      el("span", "cb-patch-tok", row).textContent = showToken(a);
      if (a !== b) {
        row.classList.add("cb-patch-diff");
        el("span", "cb-patch-arrow", row).textContent = "→";
        el("span", "cb-patch-tok cb-patch-tok-corrupt", row).textContent = showToken(b);
      }
      if (p < firstDiff) row.classList.add("cb-patch-same");
      row.dataset.position = String(p);
    } else {
      row.textContent = String(layers[rr]);
    }
    rowEls.push(row);
  }
  const heatWrap = el("div", "cb-patch-heatwrap", grid);
  const heat = el("canvas", "cb-patch-heat", heatWrap);
  heat.style.width = `${plotW}px`;
  heat.style.height = `${lay.rows * cellH}px`;
  heat.setAttribute("role", "img");
  heat.setAttribute("aria-label", `${site} patching, ${lay.rows} × ${lay.cols}`);
  const marker = el("div", "cb-patch-marker", heatWrap);
  marker.hidden = true;

  const legend = el("div", "cb-patch-legend", figure);
  el("span", "", legend).textContent = fmt(-range);
  const rampWrap = el("span", "cb-patch-rampwrap", legend);
  const ramp = el("canvas", "cb-patch-ramp", rampWrap);
  // "corrupted 0" ends at its tick and "1 clean" starts at its own, so they never overlap
  for (const [v, label] of [[0, "corrupted 0"], [1, "1 clean"]] as [number, string][]) {
    const t = el("span", "cb-patch-tick", rampWrap);
    t.style.left = `${(100 * (v + range)) / (2 * range)}%`;
    el("span", "cb-patch-tickmark", t);
    el("span", `cb-patch-ticklabel${v === 0 ? " cb-patch-ticklabel-end" : ""}`, t).textContent = label;
  }
  el("span", "", legend).textContent = fmt(range);
  const tip = el("div", "cb-tip cb-patch-tip", figure);
  tip.hidden = true;

  const side = el("div", "cb-side cb-patch-side", body);
  const readout = el("div", "cb-patch-readout", side);
  readout.textContent = "Hover a cell for its value; click to select it in linked views.";
  el("div", "cb-patch-h", side).textContent = "Top sites";
  const topBox = el("div", "cb-patch-list", side);
  el("div", "cb-patch-h", side).textContent = "Conventions";
  const notesBox = el("ul", "cb-patch-notes", side);
  for (const n of model.get("notes")) el("li", "", notesBox).textContent = n;

  // -- cells ---------------------------------------------------------------------------------
  const at = (rr: number, c: number) => lay.index(rr, c, head);
  const cellLabel = (rr: number, c: number): string => {
    if (lay.rowKind === "position" && isImage) {
      const p = positions[rr] ?? rr;
      return `L${layers[c]}${perHeadPos ? `H${heads[head] ?? head}` : ""} ${p === 0 ? "CLS" : `patch ${clean[p] ?? p}`}`;
    }
    if (lay.rowKind === "position") {
      const p = positions[rr] ?? rr;
      const a = clean[p] ?? "";
      const b = corrupted[p] ?? "";
      const tok = a === b ? JSON.stringify(a) : `${JSON.stringify(a)}→${JSON.stringify(b)}`;
      return `L${layers[c]}${perHeadPos ? `H${heads[head] ?? head}` : ""} pos ${p} ${tok}`;
    }
    if (lay.colKind === "neuron") return `L${layers[rr]} N${c}`;
    const h = heads[c] ?? c;
    const served = kv[String(h)];
    const extra = served && served.length > 1 ? ` (KV head, serves heads ${served.join(", ")})` : "";
    return `L${layers[rr]}${site === "k" || site === "v" ? "KV" : "H"}${h}${extra}`;
  };
  const selectionOf = (rr: number, c: number): Partial<Selection> => {
    if (lay.rowKind === "position") {
      const sel: Partial<Selection> = { layer: layers[c], token: positions[rr] ?? rr };
      if (perHeadPos) sel.head = heads[head] ?? head;
      return sel;
    }
    if (lay.colKind === "neuron") return { layer: layers[rr], neuron: c };
    const h = heads[c] ?? c;
    const served = kv[String(h)];
    return { layer: layers[rr], head: served && served.length ? served[0] : h };
  };
  const cellOfSelection = (): { r: number; c: number } | null => {
    const l = link.get("layer");
    if (l === null || l === undefined) return null;
    const li = layers.indexOf(l);
    if (li < 0) return null;
    if (lay.rowKind === "position") {
      const t = link.get("token");
      const ri = t === null || t === undefined ? -1 : positions.indexOf(t);
      return ri < 0 ? null : { r: ri, c: li };
    }
    if (lay.colKind === "neuron") {
      const n = link.get("neuron");
      return n === null || n === undefined || n < 0 || n >= lay.cols ? null : { r: li, c: n };
    }
    const h = link.get("head");
    if (h === null || h === undefined) return null;
    let ci = heads.indexOf(h);
    if (site === "k" || site === "v") ci = heads.findIndex((g) => (kv[String(g)] ?? [g]).includes(h));
    return ci < 0 ? null : { r: li, c: ci };
  };

  const drawHeat = () => {
    const lut = divergingFor(isDark(root));
    const unit = (v: number) => 0.5 + (0.5 * v) / range;
    maps.forEach((g, c) => {
      const perToken = new Float32Array(clean.length).fill(NaN); // positions not patched: NaN
      for (let rr = 0; rr < lay.rows; rr++) perToken[positions[rr] ?? rr] = values[at(rr, c)];
      g.color(perToken, lut, unit);
    });
    const grid2 = new Float32Array(lay.rows * lay.cols);
    for (let rr = 0; rr < lay.rows; rr++) for (let c = 0; c < lay.cols; c++) grid2[rr * lay.cols + c] = values[at(rr, c)];
    paintMatrix(heat, lay.rows, lay.cols, grid2, lut, unit);
    paintMatrix(ramp, 1, 96, Array.from({ length: 96 }, (_, i) => -range + (2 * range * i) / 95), lut, unit);
  };

  const drawTop = () => {
    const order: [number, number][] = [];
    for (let rr = 0; rr < lay.rows; rr++) for (let c = 0; c < lay.cols; c++) order.push([rr, c]);
    // the largest effects: from corrupted (0) when denoising, from clean (1) when noising
    const base = model.get("direction") === "noise" ? 1 : 0;
    order.sort((x, y) => Math.abs(values[at(y[0], y[1])] - base) - Math.abs(values[at(x[0], x[1])] - base));
    topBox.replaceChildren();
    const lut = divergingFor(isDark(root));
    for (const [rr, c] of order.slice(0, 12)) {
      const v = values[at(rr, c)];
      const row = el("div", "cb-patch-row cb-clickable", topBox);
      const sw = el("span", "cb-patch-swatch", row);
      sw.style.background = cssColor(lut, 0.5 + (0.5 * v) / range);
      el("span", "cb-patch-label", row).textContent = cellLabel(rr, c);
      el("span", "cb-patch-value", row).textContent = fmt(v);
      row.addEventListener("click", () => select(link, selectionOf(rr, c)), { signal });
    }
  };

  const drawSelection = () => {
    const t = link.get("token");
    const tok = t === null || t === undefined ? null : t;
    for (const g of pairGrids) g.mark(tok, "cb-token-active");
    if (multiples) {
      const cell = cellOfSelection();
      maps.forEach((g, c) => g.mark(cell ? (cell.c === c ? tok : null) : tok, "cb-token-active"));
      if (cell) root.dataset.selected = cellLabel(cell.r, cell.c);
      else delete root.dataset.selected;
      return;
    }
    const cell = cellOfSelection();
    marker.hidden = !cell;
    rowEls.forEach((e) => e.classList.remove("cb-patch-rsel"));
    if (cell) {
      const w = plotW / lay.cols;
      marker.style.left = `${cell.c * w}px`;
      marker.style.top = `${cell.r * cellH}px`;
      marker.style.width = `${Math.max(w, 2)}px`;
      marker.style.height = `${cellH}px`;
      if (lay.rowKind === "position") rowEls[cell.r]?.classList.add("cb-patch-rsel");
      root.dataset.selected = cellLabel(cell.r, cell.c);
    } else {
      delete root.dataset.selected;
    }
  };

  const hide = () => {
    tip.hidden = true;
    delete root.dataset.hover;
  };
  /** The value of cell `i` in the tip (placed at page point x, y) and the readout. */
  const showAt = (label: string, i: number, x?: number, y?: number) => {
    tip.hidden = false;
    tip.textContent = `${label}: ${fmt(values[i])} (raw ${fmt(raw[i])})`;
    if (x !== undefined && y !== undefined) {
      const fr = figure.getBoundingClientRect();
      tip.style.left = `${Math.max(0, x - fr.left)}px`;
      tip.style.top = `${y - fr.top}px`;
    }
    root.dataset.hover = label;
    readout.textContent = `${label}\nnormalized ${fmt(values[i])} · raw metric ${fmt(raw[i])}`;
  };
  // Hovering a patch of one layer's grid: its value; of the image pair: that patch in every layer.
  function hoverMap(c: number, tokenIndex: number | null): void {
    const rr = tokenIndex === null ? -1 : positions.indexOf(tokenIndex);
    if (rr < 0) return hide();
    const ar = maps[c]?.span(tokenIndex as number)?.getBoundingClientRect();
    showAt(cellLabel(rr, c), at(rr, c), ar && ar.right + 6, ar?.top);
  }
  function hoverToken(tokenIndex: number | null): void {
    for (const g of [...pairGrids, ...maps]) g.mark(tokenIndex, "cb-patch-hover");
    if (tokenIndex === null) return hide();
    const rr = positions.indexOf(tokenIndex);
    root.dataset.hover = tokenIndex === 0 ? "CLS" : `patch ${clean[tokenIndex] ?? tokenIndex}`;
    if (rr >= 0 && multiples) {
      const parts = layers.map((l, c) => `L${l} ${fmt(values[at(rr, c)])}`);
      readout.textContent = `${root.dataset.hover}\n${parts.join(" · ")}`;
    }
  }
  heat.addEventListener("pointermove", (ev) => {
    const cell = cellAt(heat, ev);
    if (!cell) return hide();
    showAt(cellLabel(cell.row, cell.col), at(cell.row, cell.col), ev.clientX + 12, ev.clientY + 12);
  }, { signal });
  heat.addEventListener("pointerleave", hide, { signal });
  heat.addEventListener("click", (ev) => {
    const cell = cellAt(heat, ev);
    if (cell) select(link, selectionOf(cell.row, cell.col));
  }, { signal });
  headSel?.addEventListener("change", () => {
    head = Number(headSel?.value ?? 0);
    drawHeat();
    drawTop();
    drawSelection();
  }, { signal });

  const offSel = onSelection(link, ["layer", "head", "token", "neuron"], () => {
    const h = link.get("head");
    if (perHeadPos && headSel && h !== null && h !== undefined && heads.includes(h) && heads.indexOf(h) !== head) {
      head = heads.indexOf(h);
      headSel.value = String(head);
      drawHeat();
      drawTop();
    }
    drawSelection();
  });
  const offTheme = followTheme(model as AnyModel, root, () => {
    drawHeat();
    drawTop();
  });
  drawHeat();
  drawTop();
  drawSelection();
  root.dataset.ready = "true";

  return () => {
    abort.abort();
    offSel();
    offTheme();
    root.remove();
  };
}
