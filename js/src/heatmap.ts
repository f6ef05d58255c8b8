// Draws matrices on canvas: one pixel per cell (paintMatrix/paintCodes) or a zoomable window.
import { type Lut, NAN_RGB } from "./colormaps";
import { figureCanvas, type Prim, recordCanvas } from "./figure";

/** Paint `values` (row-major, rows × cols) through `lut`; `toUnit` maps a value to [0, 1]. */
export function paintMatrix(
  canvas: HTMLCanvasElement,
  rows: number,
  cols: number,
  values: ArrayLike<number>,
  lut: Lut,
  toUnit: (v: number) => number,
  nanColor: [number, number, number] = NAN_RGB,
): void {
  if (canvas.width !== cols) canvas.width = cols;
  if (canvas.height !== rows) canvas.height = rows;
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const img = ctx.createImageData(cols, rows);
  const px = img.data;
  const n = rows * cols;
  for (let i = 0; i < n; i++) {
    const v = values[i];
    const o = 4 * i;
    if (!Number.isFinite(v)) {
      px[o] = nanColor[0];
      px[o + 1] = nanColor[1];
      px[o + 2] = nanColor[2];
      px[o + 3] = 255;
      continue;
    }
    const j = 4 * Math.max(0, Math.min(255, Math.round(toUnit(v) * 255)));
    px[o] = lut[j];
    px[o + 1] = lut[j + 1];
    px[o + 2] = lut[j + 2];
    px[o + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

/** Paint uint8 codes directly (0..255 index the LUT): the fast path for attention. */
export function paintCodes(canvas: HTMLCanvasElement, rows: number, cols: number, codes: Uint8Array, lut: Lut): void {
  if (canvas.width !== cols) canvas.width = cols;
  if (canvas.height !== rows) canvas.height = rows;
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const img = ctx.createImageData(cols, rows);
  const px32 = new Uint32Array(img.data.buffer);
  const lut32 = new Uint32Array(lut.buffer, lut.byteOffset, 256);
  const n = rows * cols;
  for (let i = 0; i < n; i++) px32[i] = lut32[codes[i]];
  ctx.putImageData(img, 0, 0);
}

/** The cell under a pointer event, or null outside the canvas. */
export function cellAt(canvas: HTMLCanvasElement, ev: { clientX: number; clientY: number }): { row: number; col: number } | null {
  const r = canvas.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) return null;
  const col = Math.floor(((ev.clientX - r.left) / r.width) * canvas.width);
  const row = Math.floor(((ev.clientY - r.top) / r.height) * canvas.height);
  if (row < 0 || col < 0 || row >= canvas.height || col >= canvas.width) return null;
  return { row, col };
}

// ---------------------------------------------------------------------------------------------
// Zoomable matrix: a fixed-size canvas that shows any window of a (possibly 4,096²) uint8
// matrix, with pan, zoom, labels on both axes and a highlighted row/column. No DOM per cell.

/** Mapping between plot pixels and cells: cell (r, c) covers x ∈ [x0 + c·k, x0 + (c+1)·k). */
export interface Transform {
  k: number; // plot pixels per cell
  x0: number; // plot pixel of the left edge of column 0
  y0: number; // plot pixel of the top edge of row 0
}

/** The transform that fits `rows × cols` cells into a `w × h` plot (square cells). */
export function fitTransform(rows: number, cols: number, w: number, h: number): Transform {
  const k = Math.min(w / Math.max(cols, 1), h / Math.max(rows, 1));
  return { k, x0: 0, y0: 0 };
}

/** Zoom by `factor` about plot point (px, py), keeping that point over the same cell. */
export function zoomAbout(t: Transform, factor: number, px: number, py: number, minK: number, maxK: number): Transform {
  const k = Math.max(minK, Math.min(maxK, t.k * factor));
  const f = k / t.k;
  return { k, x0: px - (px - t.x0) * f, y0: py - (py - t.y0) * f };
}

/** Keep the matrix covering the plot where it can (no panning into empty space). */
export function clampTransform(t: Transform, rows: number, cols: number, w: number, h: number): Transform {
  const clampAxis = (o: number, size: number, view: number) => {
    if (size <= view) return 0;
    return Math.min(0, Math.max(view - size, o));
  };
  return { k: t.k, x0: clampAxis(t.x0, cols * t.k, w), y0: clampAxis(t.y0, rows * t.k, h) };
}

/** Cell under plot point (px, py), or null outside the matrix. */
export function cellAtPlot(t: Transform, rows: number, cols: number, px: number, py: number): { row: number; col: number } | null {
  const col = Math.floor((px - t.x0) / t.k);
  const row = Math.floor((py - t.y0) / t.k);
  if (row < 0 || col < 0 || row >= rows || col >= cols) return null;
  return { row, col };
}

/**
 * Render a window of `codes` (rows × cols, uint8) into `out` (w × h RGBA as uint32) through
 * `lut32`. Zoomed in, each pixel takes its cell; zoomed out (k < 1), each pixel takes the MAX
 * of the cells it covers, so a single sharp attention weight never disappears.
 */
export function renderWindow(
  out: Uint32Array,
  w: number,
  h: number,
  codes: Uint8Array,
  rows: number,
  cols: number,
  t: Transform,
  lut32: Uint32Array,
  background: number,
  lowerOnly = false,
  sample?: CellSampler,
): void {
  const colStart = new Int32Array(w + 1);
  for (let x = 0; x <= w; x++) colStart[x] = Math.floor((x - t.x0) / t.k);
  const rowStart = new Int32Array(h + 1);
  for (let y = 0; y <= h; y++) rowStart[y] = Math.floor((y - t.y0) / t.k);
  const pooled = t.k < 1;
  for (let y = 0; y < h; y++) {
    const r0 = rowStart[y];
    const r1 = pooled ? Math.min(rows, Math.max(rowStart[y + 1], r0 + 1)) : r0 + 1;
    const line = y * w;
    if (r0 < 0 || r0 >= rows) {
      out.fill(background, line, line + w);
      continue;
    }
    for (let x = 0; x < w; x++) {
      const c0 = colStart[x];
      if (c0 < 0 || c0 >= cols) {
        out[line + x] = background;
        continue;
      }
      if (lowerOnly && c0 >= r1) {
        out[line + x] = background; // above the diagonal of a causal pattern: masked
        continue;
      }
      if (!pooled) {
        out[line + x] = lut32[sample ? sample(r0, r0 + 1, c0, c0 + 1) : codes[r0 * cols + c0]];
        continue;
      }
      const c1 = Math.min(cols, Math.max(colStart[x + 1], c0 + 1));
      if (sample) {
        out[line + x] = lut32[sample(r0, r1, c0, c1)];
        continue;
      }
      let m = 0;
      for (let r = r0; r < r1; r++) {
        const base = r * cols;
        for (let c = c0; c < c1; c++) {
          const v = codes[base + c];
          if (v > m) m = v;
        }
      }
      out[line + x] = lut32[m];
    }
  }
}

export interface ZoomHeatmapOptions {
  /** CSS pixels of the plot area (square). */
  size?: number;
  /** CSS pixels reserved left of the plot for row labels and above it for column labels. */
  marginLeft?: number;
  marginTop?: number;
  onHover?(cell: { row: number; col: number } | null, ev: PointerEvent): void;
  onClick?(cell: { row: number; col: number }, ev: MouseEvent): void;
  onZoom?(t: Transform): void;
  /** Axis titles drawn in the corner, e.g. {row: "query", col: "key"}. */
  axes?: { row: string; col: string };
}

/** The max code of cells [r0, r1) × [c0, c1) of a matrix not held whole (overview + tiles). */
export type CellSampler = (r0: number, r1: number, c0: number, c1: number) => number;
/** The deepest zoom: 8× the fit, and at least 48 CSS px per cell. */
export const MAX_ZOOM = 8;

export interface MatrixData {
  rows: number;
  cols: number;
  codes: Uint8Array;
  /** When set, cells are read through it instead of `codes` (a long prompt's head). */
  sample?: CellSampler;
  lut: Lut;
  rowLabel(i: number): string;
  colLabel(i: number): string;
  /** Causal: cells above the diagonal are drawn as background (masked), not as zeros. */
  lowerOnly?: boolean;
}

/** A canvas heatmap with wheel / button zoom, drag pan, axis labels and row/column marks. */
export class ZoomHeatmap {
  readonly canvas: HTMLCanvasElement;
  private data: MatrixData | null = null;
  private t: Transform = { k: 1, x0: 0, y0: 0 };
  private base: HTMLCanvasElement = document.createElement("canvas");
  private baseKey = "";
  private marks: { row: number | null; col: number | null } = { row: null, col: null };
  private cellMark: { row: number; col: number } | null = null;
  private colors = { fg: "#1f2328", muted: "#656d76", accent: "#cf222e", bg: "#ffffff" };
  readonly size: number;
  readonly ml: number;
  readonly mt: number;

  constructor(parent: HTMLElement, private opts: ZoomHeatmapOptions, signal: AbortSignal) {
    this.size = opts.size ?? 360;
    this.ml = opts.marginLeft ?? 84;
    this.mt = opts.marginTop ?? 64;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "cb-heatmap";
    this.canvas.setAttribute("role", "img");
    this.canvas.style.width = `${this.ml + this.size}px`;
    this.canvas.style.height = `${this.mt + this.size}px`;
    parent.appendChild(this.canvas);
    figureCanvas(this.canvas, (scale) => this.figureParts(scale));
    const c = this.canvas;
    let drag: { x: number; y: number; t: Transform; moved: boolean } | null = null;
    c.addEventListener("pointerdown", (ev) => {
      if (ev.button !== 0) return;
      drag = { x: ev.clientX, y: ev.clientY, t: this.t, moved: false };
      c.setPointerCapture?.(ev.pointerId);
    }, { signal });
    c.addEventListener("pointermove", (ev) => {
      if (drag && (drag.moved || Math.abs(ev.clientX - drag.x) + Math.abs(ev.clientY - drag.y) > 4)) {
        drag.moved = true;
        this.setTransform({ k: drag.t.k, x0: drag.t.x0 + ev.clientX - drag.x, y0: drag.t.y0 + ev.clientY - drag.y });
        c.style.cursor = "grabbing";
        return;
      }
      opts.onHover?.(this.cellAt(ev), ev);
    }, { signal });
    c.addEventListener("pointerup", () => {
      c.style.cursor = "";
      // A drag is not a click: swallow the click that follows it.
      if (drag?.moved) c.addEventListener("click", (e) => e.stopImmediatePropagation(), { once: true, capture: true });
      drag = null;
    }, { signal });
    c.addEventListener("pointerleave", (ev) => {
      if (!drag) opts.onHover?.(null, ev);
    }, { signal });
    c.addEventListener("click", (ev) => {
      const cell = this.cellAt(ev);
      if (cell) opts.onClick?.(cell, ev);
    }, { signal });
    c.addEventListener("wheel", (ev) => {
      const p = this.plotPoint(ev);
      if (!p || !this.data) return;
      ev.preventDefault();
      this.zoom(Math.exp(-ev.deltaY * 0.002), p.x, p.y);
    }, { signal, passive: false });
    c.addEventListener("dblclick", () => this.fit(), { signal });
  }

  /** Plot coordinates (CSS px from the plot's top-left) of an event, or null outside it. */
  plotPoint(ev: { clientX: number; clientY: number }): { x: number; y: number } | null {
    const r = this.canvas.getBoundingClientRect();
    const sx = r.width / (this.ml + this.size) || 1;
    const x = (ev.clientX - r.left) / sx - this.ml;
    const y = (ev.clientY - r.top) / sx - this.mt;
    if (x < 0 || y < 0 || x >= this.size || y >= this.size) return null;
    return { x, y };
  }

  cellAt(ev: { clientX: number; clientY: number }): { row: number; col: number } | null {
    const p = this.plotPoint(ev);
    if (!p || !this.data) return null;
    return cellAtPlot(this.t, this.data.rows, this.data.cols, p.x, p.y);
  }

  get transform(): Transform {
    return this.t;
  }

  /** Show a matrix; `keepView` keeps zoom and pan when the shape is unchanged (head switch). */
  setData(data: MatrixData, keepView = false): void {
    const same = this.data && this.data.rows === data.rows && this.data.cols === data.cols;
    this.data = data;
    this.baseKey = "";
    if (!(keepView && same)) this.t = fitTransform(data.rows, data.cols, this.size, this.size);
    this.draw();
  }

  setColors(colors: Partial<ZoomHeatmap["colors"]>): void {
    this.colors = { ...this.colors, ...colors };
    this.baseKey = "";
  }

  /** Outline one cell (the one an explanation is open for), or none with null. */
  setCellMark(cell: { row: number; col: number } | null): void {
    if (this.cellMark?.row === cell?.row && this.cellMark?.col === cell?.col) return;
    this.cellMark = cell;
    this.draw();
  }

  setMarks(row: number | null, col: number | null): void {
    if (this.marks.row === row && this.marks.col === col) return;
    this.marks = { row, col };
    this.draw();
  }

  fit(): void {
    if (!this.data) return;
    this.setTransform(fitTransform(this.data.rows, this.data.cols, this.size, this.size));
  }

  zoom(factor: number, px = this.size / 2, py = this.size / 2): void {
    if (!this.data) return;
    this.setTransform(zoomAbout(this.t, factor, px, py, this.fitK(), this.maxK()));
  }

  private fitK(): number {
    return this.data ? fitTransform(this.data.rows, this.data.cols, this.size, this.size).k : 1;
  }

  private maxK(): number {
    return Math.max(this.fitK() * MAX_ZOOM, 48);
  }

  /** True when zooming in further has no effect. */
  get atMaxZoom(): boolean {
    return this.t.k >= this.maxK() * 0.999;
  }

  /** The heatmap as figure primitives: cells as an image (one pixel per cell × `scale` of the
   * current window), labels and marks as text and rectangles. */
  figureParts(scale: number): Prim[] {
    const d = this.data;
    if (!d) return [];
    const t = this.t;
    const P = Math.max(1, Math.round(this.size * scale));
    const cells = document.createElement("canvas");
    cells.width = P;
    cells.height = P;
    const cctx = cells.getContext("2d");
    if (cctx) {
      const img = cctx.createImageData(P, P);
      const lut32 = new Uint32Array(d.lut.buffer, d.lut.byteOffset, 256);
      renderWindow(new Uint32Array(img.data.buffer), P, P, d.codes, d.rows, d.cols, { k: t.k * scale, x0: t.x0 * scale, y0: t.y0 * scale }, lut32, cssToUint32(this.colors.bg), d.lowerOnly ?? false);
      cctx.putImageData(img, 0, 0);
    }
    return recordCanvas((ctx) => {
      ctx.drawImage(cells, this.ml, this.mt, this.size, this.size);
      this.drawLabels(ctx, d);
      this.drawMarks(ctx, d);
    });
  }

  /** Centre cell (row, col) at the current zoom. */
  centerOn(row: number, col: number): void {
    const half = this.size / 2;
    this.setTransform({ k: this.t.k, x0: half - (col + 0.5) * this.t.k, y0: half - (row + 0.5) * this.t.k });
  }

  /** Make sure row `row` is visible, panning as little as possible. */
  reveal(row: number, col: number): void {
    const y = this.t.y0 + row * this.t.k;
    const x = this.t.x0 + col * this.t.k;
    if (y >= 0 && y + this.t.k <= this.size && x >= 0 && x + this.t.k <= this.size) return;
    this.centerOn(row, col);
  }

  setTransform(t: Transform): void {
    if (!this.data) return;
    this.t = clampTransform(t, this.data.rows, this.data.cols, this.size, this.size);
    this.draw();
    this.opts.onZoom?.(this.t);
  }

  /** Redraw (cells are cached until data, colours or view change). */
  draw(): void {
    const c = this.canvas;
    const dpr = Math.max(1, Math.round(window.devicePixelRatio || 1));
    const W = (this.ml + this.size) * dpr;
    const H = (this.mt + this.size) * dpr;
    if (c.width !== W) c.width = W;
    if (c.height !== H) c.height = H;
    const ctx = c.getContext("2d");
    const d = this.data;
    if (!ctx || !d) return;
    const P = this.size * dpr;
    const t = this.t;
    const key = `${t.k},${t.x0},${t.y0},${dpr}`;
    if (key !== this.baseKey) {
      this.base.width = P;
      this.base.height = P;
      const bctx = this.base.getContext("2d");
      if (!bctx) return;
      const img = bctx.createImageData(P, P);
      const out = new Uint32Array(img.data.buffer);
      const lut32 = new Uint32Array(d.lut.buffer, d.lut.byteOffset, 256);
      const bg = cssToUint32(this.colors.bg);
      renderWindow(out, P, P, d.codes, d.rows, d.cols, { k: t.k * dpr, x0: t.x0 * dpr, y0: t.y0 * dpr }, lut32, bg, d.lowerOnly ?? false, d.sample);
      bctx.putImageData(img, 0, 0);
      this.baseKey = key;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = this.colors.bg;
    ctx.fillRect(0, 0, W, H);
    ctx.drawImage(this.base, this.ml * dpr, this.mt * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.drawLabels(ctx, d);
    this.drawMarks(ctx, d);
    c.dataset.x0 = String((this.ml + t.x0) * dpr);
    c.dataset.y0 = String((this.mt + t.y0) * dpr);
    c.dataset.cell = String(t.k * dpr);
    c.dataset.rows = String(d.rows);
    c.dataset.cols = String(d.cols);
    const fitK = fitTransform(d.rows, d.cols, this.size, this.size).k;
    c.dataset.zoom = (t.k / fitK).toFixed(2);
  }

  /** The cells [r0, r1) × [c0, c1) inside the plot at the current zoom and pan. */
  visibleCells(): { r0: number; r1: number; c0: number; c1: number } | null {
    if (!this.data) return null;
    const [r0, r1] = this.visible(this.data.rows, this.t.y0);
    const [c0, c1] = this.visible(this.data.cols, this.t.x0);
    return { r0, r1, c0, c1 };
  }

  private visible(n: number, o: number): [number, number] {
    const a = Math.max(0, Math.floor(-o / this.t.k));
    const b = Math.min(n, Math.ceil((this.size - o) / this.t.k));
    return [a, b];
  }

  private drawLabels(ctx: CanvasRenderingContext2D, d: MatrixData): void {
    const t = this.t;
    const font = 10;
    const stride = Math.max(1, Math.ceil((font + 2) / t.k));
    ctx.font = `${font}px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace`;
    ctx.textBaseline = "middle";
    const [r0, r1] = this.visible(d.rows, t.y0);
    ctx.save();
    ctx.beginPath();
    ctx.rect(0, this.mt, this.ml, this.size);
    ctx.clip();
    ctx.textAlign = "right";
    for (let r = Math.ceil(r0 / stride) * stride; r < r1; r += stride) {
      const y = this.mt + t.y0 + (r + 0.5) * t.k;
      ctx.fillStyle = r === this.marks.row ? this.colors.accent : this.colors.fg;
      ctx.fillText(fitText(ctx, d.rowLabel(r), this.ml - 6), this.ml - 4, y);
    }
    ctx.restore();
    const [c0, c1] = this.visible(d.cols, t.x0);
    ctx.save();
    ctx.beginPath();
    ctx.rect(this.ml, 0, this.size, this.mt);
    ctx.clip();
    ctx.textAlign = "left";
    for (let col = Math.ceil(c0 / stride) * stride; col < c1; col += stride) {
      const x = this.ml + t.x0 + (col + 0.5) * t.k;
      ctx.save();
      ctx.translate(x, this.mt - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.fillStyle = col === this.marks.col ? this.colors.accent : this.colors.fg;
      ctx.fillText(fitText(ctx, d.colLabel(col), this.mt - 6), 0, 0);
      ctx.restore();
    }
    ctx.restore();
    ctx.strokeStyle = this.colors.muted;
    ctx.lineWidth = 1;
    ctx.strokeRect(this.ml - 0.5, this.mt - 0.5, this.size + 1, this.size + 1);
    const axes = this.opts.axes;
    if (axes) {
      // Axis titles in the empty corner: the key axis runs along the top, queries down the left.
      ctx.font = "italic 11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
      ctx.fillStyle = this.colors.muted;
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      ctx.fillText(`${axes.col} →`, this.ml - 6, this.mt - 24);
      ctx.fillText(`${axes.row} ↓`, this.ml - 6, this.mt - 10);
    }
  }

  private drawMarks(ctx: CanvasRenderingContext2D, d: MatrixData): void {
    const t = this.t;
    ctx.save();
    ctx.beginPath();
    ctx.rect(this.ml, this.mt, this.size, this.size);
    ctx.clip();
    ctx.strokeStyle = this.colors.accent;
    ctx.lineWidth = 1.5;
    const { row, col } = this.marks;
    if (row !== null && row < d.rows) {
      const y = this.mt + t.y0 + row * t.k;
      ctx.strokeRect(this.ml + t.x0, y, d.cols * t.k, Math.max(t.k, 1));
    }
    if (col !== null && col < d.cols) {
      const x = this.ml + t.x0 + col * t.k;
      ctx.setLineDash([3, 3]);
      ctx.strokeRect(x, this.mt + t.y0, Math.max(t.k, 1), d.rows * t.k);
    }
    const cell = this.cellMark;
    if (cell && cell.row < d.rows && cell.col < d.cols) {
      // A dark halo under an accent outline: visible on light and dark cells, and unlike the
      // row / column marks it closes around one cell.
      const x = this.ml + t.x0 + cell.col * t.k;
      const y = this.mt + t.y0 + cell.row * t.k;
      const w = Math.max(t.k, 4);
      ctx.setLineDash([]);
      ctx.strokeStyle = this.colors.fg;
      ctx.lineWidth = 4;
      ctx.strokeRect(x, y, w, w);
      ctx.strokeStyle = this.colors.accent;
      ctx.lineWidth = 2;
      ctx.strokeRect(x, y, w, w);
    }
    ctx.restore();
  }
}

/** `text`, cut with "…" to fit `width` pixels in the context's font. */
export function fitText(ctx: CanvasRenderingContext2D, text: string, width: number): string {
  if (ctx.measureText(text).width <= width) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(`${text.slice(0, mid)}…`).width <= width) lo = mid;
    else hi = mid - 1;
  }
  return `${text.slice(0, lo)}…`;
}

/** "#rrggbb" → little-endian RGBA uint32 as ImageData stores it. */
export function cssToUint32(css: string): number {
  const m = /^#([0-9a-f]{6})$/i.exec(css.trim());
  const n = m ? Number.parseInt(m[1], 16) : 0xffffff;
  return ((255 << 24) | ((n & 0xff) << 16) | (n & 0xff00) | ((n >> 16) & 0xff)) >>> 0;
}
