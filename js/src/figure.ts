// Figures for papers: any view as PNG or SVG (canvases embedded as images, text as <text>).
//
// The view's DOM is walked once into primitives (filled boxes, canvases, text runs), which are
// then written as SVG or painted on a canvas for PNG. `attachFigure` adds the ⤓ button to a
// view's header and answers `{kind: "figure"}` requests from Python (view.save_png/svg).
import type { AnyModel } from "@anywidget/types";

type Box = { x: number; y: number; w: number; h: number };
type Prim =
  | ({ kind: "rect"; fill: string | null; stroke: string | null; radius: number } & Box)
  | ({ kind: "image"; canvas: HTMLCanvasElement; pixelated: boolean } & Box)
  // an SVG path whose coordinates are relative to (x, y); w × h bounds it (curves of a graph)
  | ({ kind: "path"; d: string; fill: string | null; stroke: string | null; width: number } & Box)
  | {
      kind: "text";
      x: number;
      y: number;
      text: string;
      font: string;
      fill: string;
      anchor?: "start" | "end" | "middle";
      middle?: boolean; // y is the text's vertical middle, not its baseline
      rotate?: number; // degrees, about (x, y)
    };

export interface Figure {
  width: number;
  height: number;
  background: string;
  prims: Prim[];
}

const SKIP = "cb-figure-skip";
const MODE = "cb-figure-mode";

/** What a view adds to its figures: a title, and a redraw without hover or zoom state. */
export interface FigureHooks {
  /** The figure's title, e.g. "Layer 20 · Head 3". */
  title(): string;
  /** Redraw for the figure (whole matrix, no hover marks); `exit` restores the live state. */
  enter?(scale: number): void;
  exit?(): void;
}
const HOOKS = new WeakMap<HTMLElement, FigureHooks>();
/** Canvases that draw their own figure parts (labels as text) in CSS px of the canvas box. */
const CANVAS_PARTS = new WeakMap<HTMLCanvasElement, (scale: number, format: "png" | "svg") => Prim[]>();

/** Register a view's figure hooks on its `.cb-root`. */
export function figureHooks(root: HTMLElement, hooks: FigureHooks): void {
  HOOKS.set(root, hooks);
}

/** Register a canvas whose figure is drawn by `draw` (see `recordCanvas`) instead of copied. */
export function figureCanvas(canvas: HTMLCanvasElement, parts: (scale: number, format: "png" | "svg") => Prim[]): void {
  CANVAS_PARTS.set(canvas, parts);
}

/** `paint` (drawing in CSS px of a `w` × `h` box) on a canvas of `scale` × that size, as one
 * image primitive: a PNG figure's text drawn natively at its resolution, fast and sharp. */
export function paintedAt(w: number, h: number, scale: number, paint: (ctx: CanvasRenderingContext2D) => void): Prim[] {
  const c = document.createElement("canvas");
  c.width = Math.max(1, Math.round(w * scale));
  c.height = Math.max(1, Math.round(h * scale));
  const ctx = c.getContext("2d");
  if (!ctx) return [];
  ctx.scale(scale, scale);
  paint(ctx);
  return [{ kind: "image", x: 0, y: 0, w, h, canvas: c, pixelated: false }];
}

export type { Prim };

/**
 * Run `draw` (canvas drawing code) against a recorder: filled / stroked rectangles, text and
 * images become figure primitives, so an SVG keeps text as text and a PNG redraws it crisply
 * at any scale. Supports the calls the views use (translate / rotate / scale, save / restore).
 */
export function recordCanvas(draw: (ctx: CanvasRenderingContext2D) => void): Prim[] {
  const prims: Prim[] = [];
  type State = { a: number; b: number; c: number; d: number; e: number; f: number; fillStyle: string; strokeStyle: string; font: string; textAlign: CanvasTextAlign; textBaseline: CanvasTextBaseline; lineWidth: number };
  let st: State = { a: 1, b: 0, c: 0, d: 1, e: 0, f: 0, fillStyle: "#000", strokeStyle: "#000", font: "10px sans-serif", textAlign: "start", textBaseline: "alphabetic", lineWidth: 1 };
  const stack: State[] = [];
  const pt = (x: number, y: number) => ({ x: st.a * x + st.c * y + st.e, y: st.b * x + st.d * y + st.f });
  const sx = () => Math.hypot(st.a, st.b);
  const sy = () => Math.hypot(st.c, st.d);
  const box = (x: number, y: number, w: number, h: number) => {
    const p = pt(x, y);
    const q = pt(x + w, y + h);
    return { x: Math.min(p.x, q.x), y: Math.min(p.y, q.y), w: Math.abs(q.x - p.x), h: Math.abs(q.y - p.y) };
  };
  measure ??= document.createElement("canvas").getContext("2d");
  const noop = () => undefined;
  // the current path, in figure coordinates, and how far it reaches (for trimming)
  let d: string[] = [];
  let reach = { x: 0, y: 0 };
  const to = (cmd: string, ...xy: number[]) => {
    const parts: string[] = [];
    for (let i = 0; i < xy.length; i += 2) {
      const q = pt(xy[i], xy[i + 1]);
      reach = { x: Math.max(reach.x, q.x), y: Math.max(reach.y, q.y) };
      parts.push(`${q.x.toFixed(2)} ${q.y.toFixed(2)}`);
    }
    d.push(`${cmd}${parts.join(" ")}`);
  };
  const drawn = (fill: string | null, stroke: string | null) => {
    if (d.length) prims.push({ kind: "path", x: 0, y: 0, w: reach.x, h: reach.y, d: d.join(""), fill, stroke, width: st.lineWidth * sx() });
  };
  const ctx = {
    get fillStyle() { return st.fillStyle; },
    set fillStyle(v: string) { st.fillStyle = String(v); },
    get strokeStyle() { return st.strokeStyle; },
    set strokeStyle(v: string) { st.strokeStyle = String(v); },
    get font() { return st.font; },
    set font(v: string) { st.font = v; },
    get textAlign() { return st.textAlign; },
    set textAlign(v: CanvasTextAlign) { st.textAlign = v; },
    get textBaseline() { return st.textBaseline; },
    set textBaseline(v: CanvasTextBaseline) { st.textBaseline = v; },
    get lineWidth() { return st.lineWidth; },
    set lineWidth(v: number) { st.lineWidth = v; },
    imageSmoothingEnabled: false,
    save() { stack.push({ ...st }); },
    restore() { st = stack.pop() ?? st; },
    translate(x: number, y: number) { st.e += st.a * x + st.c * y; st.f += st.b * x + st.d * y; },
    scale(x: number, y: number) { st.a *= x; st.b *= x; st.c *= y; st.d *= y; },
    rotate(r: number) {
      const cos = Math.cos(r), sin = Math.sin(r);
      const { a, b, c, d } = st;
      st.a = a * cos + c * sin; st.b = b * cos + d * sin; st.c = c * cos - a * sin; st.d = d * cos - b * sin;
    },
    setTransform(a = 1, b = 0, c = 0, d = 1, e = 0, f = 0) { Object.assign(st, { a, b, c, d, e, f }); },
    resetTransform() { Object.assign(st, { a: 1, b: 0, c: 0, d: 1, e: 0, f: 0 }); },
    fillRect(x: number, y: number, w: number, h: number) { prims.push({ kind: "rect", ...box(x, y, w, h), fill: st.fillStyle, stroke: null, radius: 0 }); },
    strokeRect(x: number, y: number, w: number, h: number) { prims.push({ kind: "rect", ...box(x, y, w, h), fill: null, stroke: st.strokeStyle, radius: 0 }); },
    fillText(text: string, x: number, y: number) {
      const p = pt(x, y);
      const rot = (Math.atan2(st.b, st.a) * 180) / Math.PI;
      const size = Number.parseFloat(st.font.match(/([\d.]+)px/)?.[1] ?? "10") * sy();
      const font = st.font.replace(/([\d.]+)px/, `${size}px`);
      const anchor = st.textAlign === "right" || st.textAlign === "end" ? "end" : st.textAlign === "center" ? "middle" : "start";
      prims.push({ kind: "text", x: p.x, y: p.y, text, font, fill: st.fillStyle, anchor, middle: st.textBaseline === "middle", rotate: Math.abs(rot) > 0.01 ? rot : undefined });
    },
    measureText(text: string) {
      if (!measure) return { width: text.length * 6 } as TextMetrics;
      measure.font = st.font;
      return measure.measureText(text);
    },
    drawImage(img: CanvasImageSource, x: number, y: number, w?: number, h?: number) {
      if (!(img instanceof HTMLCanvasElement)) return;
      const b = box(x, y, w ?? img.width, h ?? img.height);
      prims.push({ kind: "image", ...b, canvas: img, pixelated: true });
    },
    beginPath() { d = []; reach = { x: 0, y: 0 }; },
    moveTo(x: number, y: number) { to("M", x, y); },
    lineTo(x: number, y: number) { to("L", x, y); },
    bezierCurveTo(a: number, b: number, c: number, e: number, x: number, y: number) { to("C", a, b, c, e, x, y); },
    quadraticCurveTo(a: number, b: number, x: number, y: number) { to("Q", a, b, x, y); },
    closePath() { d.push("Z"); },
    stroke() { drawn(null, st.strokeStyle); },
    fill() { drawn(st.fillStyle, null); },
    clearRect: noop, rect: noop, clip: noop, setLineDash: noop, arc: noop, roundRect: noop,
  };
  void sx;
  draw(ctx as unknown as CanvasRenderingContext2D);
  return prims;
}

function visible(c: string | null | undefined): c is string {
  return !!c && c !== "transparent" && !/rgba\([^)]*,\s*0\)$/.test(c);
}

/** `color` (a computed `rgb()` / `rgba()`) with its alpha multiplied by `opacity`: an element
 * drawn translucent (a heat overlay over an image) stays translucent in the figure. */
export function withOpacity(color: string, opacity: number): string {
  if (!(opacity < 1)) return color;
  const m = /rgba?\(\s*([\d.]+)[,\s]+([\d.]+)[,\s]+([\d.]+)(?:[,\s/]+([\d.]+))?\s*\)/.exec(color);
  if (!m) return color;
  const a = (m[4] === undefined ? 1 : Number(m[4])) * opacity;
  return `rgba(${m[1]}, ${m[2]}, ${m[3]}, ${Math.round(a * 1000) / 1000})`;
}

function fontOf(cs: CSSStyleDeclaration): string {
  return `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
}

let measure: CanvasRenderingContext2D | null = null;
function baseline(font: string, top: number, height: number): number {
  measure ??= document.createElement("canvas").getContext("2d");
  if (!measure) return top + height * 0.78;
  measure.font = font;
  const m = measure.measureText("Hg");
  const asc = m.fontBoundingBoxAscent ?? m.actualBoundingBoxAscent;
  const desc = m.fontBoundingBoxDescent ?? m.actualBoundingBoxDescent;
  return top + (height - (asc + desc)) / 2 + asc;
}

function textWidth(font: string, text: string): number {
  measure ??= document.createElement("canvas").getContext("2d");
  if (!measure) return text.length * 8;
  measure.font = font;
  return measure.measureText(text).width;
}

/** A CSS `linear-gradient(...)` drawn on a canvas (colour bars are often CSS gradients). */
function gradientCanvas(css: string, w: number, h: number): HTMLCanvasElement | null {
  const m = css.match(/^linear-gradient\((.*)\)$/);
  if (!m) return null;
  const parts = m[1].split(/,(?![^(]*\))/).map((x) => x.trim());
  let dir = "to bottom";
  if (/^(to |\d)/.test(parts[0])) dir = parts.shift() ?? dir;
  const horizontal = dir === "to right" || dir === "90deg";
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d");
  if (!ctx || parts.length < 2) return null;
  const g = horizontal ? ctx.createLinearGradient(0, 0, w, 0) : ctx.createLinearGradient(0, 0, 0, h);
  parts.forEach((p, i) => {
    const stop = p.match(/^(.*?)(?:\s+([\d.]+)%)?$/);
    const color = stop?.[1] ?? p;
    const at = stop?.[2] !== undefined ? Number(stop[2]) / 100 : i / (parts.length - 1);
    try {
      g.addColorStop(Math.min(1, Math.max(0, at)), color);
    } catch {
      /* an unparsable stop: skip it */
    }
  });
  ctx.fillStyle = g;
  ctx.fillRect(0, 0, w, h);
  return c;
}

/** Walk `root` (a view's .cb-root) into drawing primitives in its own coordinates. */
export function collect(root: HTMLElement, scale = 2, format: "png" | "svg" = "png"): Figure {
  const R = root.getBoundingClientRect();
  const prims: Prim[] = [];
  const rel = (r: DOMRect): Box => ({ x: r.left - R.left, y: r.top - R.top, w: r.width, h: r.height });
  // Content scrolled out of a panel (overflow hidden / auto) is not in the figure.
  const within = (b: Box, c: Box) => b.w > 0 && b.h > 0 && b.x < c.x + c.w && b.y < c.y + c.h && b.x + b.w > c.x && b.y + b.h > c.y;

  const textRuns = (node: Text, cs: CSSStyleDeclaration, clip: Box) => {
    const s = node.data;
    if (!s.trim()) return;
    const font = fontOf(cs);
    const range = document.createRange();
    range.selectNodeContents(node);
    const rects = [...range.getClientRects()].filter((r) => r.width > 0);
    if (rects.length === 0) return;
    const push = (text: string, r: DOMRect) => {
      const b = rel(r);
      if (within(b, clip)) prims.push({ kind: "text", x: b.x, y: baseline(font, b.y, b.h), text, font, fill: cs.color });
    };
    if (rects.length === 1) return push(s, rects[0]);
    // Wrapped text: one run per line, found word by word.
    let lineStart = 0;
    let lineTop: number | null = null;
    let lineRect: DOMRect | null = null;
    const re = /\S+/g;
    let m: RegExpExecArray | null;
    let lastEnd = 0;
    while ((m = re.exec(s))) {
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const r = range.getBoundingClientRect();
      if (lineTop === null || Math.abs(r.top - lineTop) > 1) {
        if (lineRect) push(s.slice(lineStart, lastEnd), lineRect);
        lineStart = m.index;
        lineTop = r.top;
        lineRect = r;
      }
      lastEnd = m.index + m[0].length;
    }
    if (lineRect) push(s.slice(lineStart, lastEnd), lineRect);
  };

  const walk = (el: Element, clip: Box) => {
    if (el.classList.contains(SKIP) || (el as HTMLElement).hidden) return;
    if (el instanceof HTMLSelectElement || el instanceof HTMLInputElement) return; // controls
    const cs = getComputedStyle(el);
    if (cs.display === "none" || cs.visibility === "hidden") return;
    const b = rel(el.getBoundingClientRect());
    const inside = within(b, clip);
    if (el !== root && inside) {
      const fill = visible(cs.backgroundColor) ? withOpacity(cs.backgroundColor, Number(cs.opacity)) : null;
      const bw = Number.parseFloat(cs.borderTopWidth) || 0;
      const stroke = bw > 0 && cs.borderTopStyle !== "none" && visible(cs.borderTopColor) ? cs.borderTopColor : null;
      // An inset ring (the active-token marker) is drawn as a stroke.
      const ring = /inset/.test(cs.boxShadow) && /0px 0px 0px [1-9]/.test(cs.boxShadow) ? cs.boxShadow.match(/rgba?\([^)]*\)/)?.[0] : undefined;
      const shadow = visible(ring) ? ring : null;
      if (fill || stroke || shadow) {
        prims.push({ kind: "rect", ...b, fill, stroke: stroke ?? shadow, radius: Number.parseFloat(cs.borderTopLeftRadius) || 0 });
      }
    }
    if (inside && cs.backgroundImage.startsWith("linear-gradient")) {
      const bar = gradientCanvas(cs.backgroundImage, Math.max(1, Math.round(b.w)), Math.max(1, Math.round(b.h)));
      if (bar) prims.push({ kind: "image", ...b, canvas: bar, pixelated: false });
    }
    if (el instanceof HTMLCanvasElement) {
      if (!inside || el.width === 0 || el.height === 0) return;
      const own = CANVAS_PARTS.get(el);
      if (own) {
        for (const p of own(scale, format)) prims.push({ ...p, x: p.x + b.x, y: p.y + b.y });
      } else {
        prims.push({ kind: "image", ...b, canvas: el, pixelated: cs.imageRendering === "pixelated" });
      }
      return;
    }
    let inner = clip;
    if (el !== root && cs.overflow !== "visible") {
      const x0 = Math.max(clip.x, b.x);
      const y0 = Math.max(clip.y, b.y);
      inner = { x: x0, y: y0, w: Math.max(0, Math.min(clip.x + clip.w, b.x + b.w) - x0), h: Math.max(0, Math.min(clip.y + clip.h, b.y + b.h) - y0) };
    }
    for (const child of el.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) textRuns(child as Text, cs, inner);
      else if (child.nodeType === Node.ELEMENT_NODE) walk(child as Element, inner);
    }
  };
  walk(root, { x: 0, y: 0, w: R.width, h: R.height });
  const bg = getComputedStyle(root).backgroundColor;
  // Trim empty space on the right and below (views are as wide as their cell; figures are not).
  let right = 0;
  let bottom = 0;
  for (const p of prims) {
    if (p.kind === "text") {
      const w = textWidth(p.font, p.text);
      right = Math.max(right, p.rotate ? p.x + 12 : p.anchor === "end" ? p.x : p.anchor === "middle" ? p.x + w / 2 : p.x + w);
      bottom = Math.max(bottom, p.y + 6);
    } else {
      right = Math.max(right, p.x + p.w);
      bottom = Math.max(bottom, p.y + p.h);
    }
  }
  const width = Math.min(Math.ceil(R.width), Math.ceil(right + 10));
  const height = Math.min(Math.ceil(R.height), Math.ceil(bottom + 10));
  return { width, height, background: visible(bg) ? bg : "#ffffff", prims };
}

/**
 * The figure of a view: its content only. Controls, status and help text are left out
 * (`.cb-figure-mode` in style.css), a title says what is shown, and the view redraws without
 * hover marks, zoom or scroll (its `FigureHooks`), then returns to its live state.
 */
export function figureOf(root: HTMLElement, scale = 2, format: "png" | "svg" = "png"): Figure {
  const hooks = HOOKS.get(root);
  const title = document.createElement("div");
  title.className = "cb-figure-title";
  title.textContent = hooks?.title() ?? root.querySelector(".cb-title")?.textContent ?? "";
  root.classList.add(MODE);
  root.prepend(title);
  try {
    hooks?.enter?.(scale);
    return collect(root, scale, format);
  } finally {
    title.remove();
    root.classList.remove(MODE);
    hooks?.exit?.();
  }
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A canvas scaled to its displayed size × `scale`, nearest-neighbour when pixelated. */
function scaled(p: Extract<Prim, { kind: "image" }>, scale: number): HTMLCanvasElement {
  const c = document.createElement("canvas");
  c.width = Math.max(1, Math.round(p.w * scale));
  c.height = Math.max(1, Math.round(p.h * scale));
  const ctx = c.getContext("2d");
  if (ctx) {
    ctx.imageSmoothingEnabled = !p.pixelated;
    ctx.drawImage(p.canvas, 0, 0, c.width, c.height);
  }
  return c;
}

/** The figure as a standalone SVG document (text stays text; canvases become PNG images). */
export function toSvg(fig: Figure): string {
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${fig.width}" height="${fig.height}" viewBox="0 0 ${fig.width} ${fig.height}">`,
    `<rect width="100%" height="100%" fill="${esc(fig.background)}"/>`,
  ];
  for (const p of fig.prims) {
    if (p.kind === "rect") {
      out.push(
        `<rect x="${p.x.toFixed(1)}" y="${p.y.toFixed(1)}" width="${p.w.toFixed(1)}" height="${p.h.toFixed(1)}" rx="${p.radius}" fill="${p.fill ? esc(p.fill) : "none"}"${p.stroke ? ` stroke="${esc(p.stroke)}"` : ""}/>`,
      );
    } else if (p.kind === "path") {
      out.push(
        `<path transform="translate(${p.x.toFixed(1)} ${p.y.toFixed(1)})" d="${esc(p.d)}" fill="${p.fill ? esc(p.fill) : "none"}"${p.stroke ? ` stroke="${esc(p.stroke)}" stroke-width="${p.width.toFixed(2)}"` : ""}/>`,
      );
    } else if (p.kind === "image") {
      const url = scaled(p, p.pixelated ? 1 : 2).toDataURL("image/png");
      out.push(`<image x="${p.x.toFixed(1)}" y="${p.y.toFixed(1)}" width="${p.w.toFixed(1)}" height="${p.h.toFixed(1)}" preserveAspectRatio="none" href="${url}"/>`);
    } else {
      const anchor = p.anchor && p.anchor !== "start" ? ` text-anchor="${p.anchor}"` : "";
      const middle = p.middle ? ' dominant-baseline="central"' : "";
      const rot = p.rotate ? ` transform="rotate(${p.rotate.toFixed(1)} ${p.x.toFixed(1)} ${p.y.toFixed(1)})"` : "";
      out.push(`<text x="${p.x.toFixed(1)}" y="${p.y.toFixed(1)}"${anchor}${middle}${rot} fill="${esc(p.fill)}" style="font:${esc(p.font)};white-space:pre" xml:space="preserve">${esc(p.text)}</text>`);
    }
  }
  out.push("</svg>");
  return out.join("\n");
}

/** The figure painted on a canvas at `scale` × CSS pixels, as PNG bytes. */
/** The largest scale ≤ `scale` whose canvas browsers can still encode (≤ 32,000 px a side,
 * ≤ 120 M pixels); a very long logit lens gets a smaller PNG instead of a failed one. */
export function pngScale(width: number, height: number, scale: number): number {
  return Math.min(scale, 32_000 / Math.max(width, 1), 32_000 / Math.max(height, 1), Math.sqrt(1.2e8 / Math.max(width * height, 1)));
}

export async function toPng(fig: Figure, wanted = 2): Promise<Uint8Array> {
  const scale = pngScale(fig.width, fig.height, wanted);
  const c = document.createElement("canvas");
  c.width = Math.ceil(fig.width * scale);
  c.height = Math.ceil(fig.height * scale);
  const ctx = c.getContext("2d");
  if (!ctx) throw new Error("[circuitboard] no 2D canvas to draw the figure on");
  ctx.scale(scale, scale);
  ctx.fillStyle = fig.background;
  ctx.fillRect(0, 0, fig.width, fig.height);
  for (const p of fig.prims) {
    if (p.kind === "rect") {
      ctx.beginPath();
      ctx.roundRect(p.x, p.y, p.w, p.h, p.radius);
      if (p.fill) {
        ctx.fillStyle = p.fill;
        ctx.fill();
      }
      if (p.stroke) {
        ctx.strokeStyle = p.stroke;
        ctx.lineWidth = 1;
        ctx.stroke();
      }
    } else if (p.kind === "path") {
      ctx.save();
      ctx.translate(p.x, p.y);
      const path = new Path2D(p.d);
      if (p.fill) {
        ctx.fillStyle = p.fill;
        ctx.fill(path);
      }
      if (p.stroke) {
        ctx.strokeStyle = p.stroke;
        ctx.lineWidth = p.width;
        ctx.stroke(path);
      }
      ctx.restore();
    } else if (p.kind === "image") {
      ctx.imageSmoothingEnabled = !p.pixelated;
      ctx.drawImage(p.canvas, p.x, p.y, p.w, p.h);
    } else {
      ctx.save();
      ctx.font = p.font;
      ctx.fillStyle = p.fill;
      ctx.textBaseline = p.middle ? "middle" : "alphabetic";
      ctx.textAlign = p.anchor === "end" ? "right" : p.anchor === "middle" ? "center" : "left";
      ctx.translate(p.x, p.y);
      if (p.rotate) ctx.rotate((p.rotate * Math.PI) / 180);
      ctx.fillText(p.text, 0, 0);
      ctx.restore();
    }
  }
  const blob = await new Promise<Blob | null>((resolve) => c.toBlob(resolve, "image/png"));
  if (!blob) throw new Error("[circuitboard] the browser could not encode the PNG");
  return new Uint8Array(await blob.arrayBuffer());
}

export async function figureBytes(root: HTMLElement, format: "png" | "svg", wanted = 2): Promise<Uint8Array> {
  const r = root.getBoundingClientRect();
  const scale = format === "png" ? pngScale(r.width, r.height, wanted) : wanted;
  const fig = figureOf(root, scale, format);
  return format === "svg" ? new TextEncoder().encode(toSvg(fig)) : toPng(fig, scale);
}

function download(bytes: Uint8Array, name: string, type: string): void {
  const url = URL.createObjectURL(new Blob([bytes as BlobPart], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Add the PNG/SVG buttons to the view under `host` and answer Python's figure requests. */
export function attachFigure(host: HTMLElement, model: AnyModel, name: string): () => void {
  const root = host.querySelector<HTMLElement>(".cb-root");
  const header = root?.querySelector<HTMLElement>(".cb-header");
  const abort = new AbortController();
  if (root && header) {
    const box = document.createElement("span");
    box.className = `cb-figure-buttons ${SKIP}`;
    for (const format of ["png", "svg"] as const) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "cb-figure-button";
      b.textContent = `\u2913 ${format.toUpperCase()}`;
      b.title = `Save this view as ${format.toUpperCase()}`;
      b.dataset.format = format;
      b.addEventListener("click", async () => {
        if (b.disabled) return;
        const label = b.textContent;
        b.disabled = true;
        b.textContent = `\u23F3 ${format.toUpperCase()}…`; // progress: drawn before the work starts
        b.setAttribute("aria-busy", "true");
        await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
        try {
          const t0 = performance.now();
          const bytes = await figureBytes(root, format, Number(root.dataset.cbFigureScale ?? 2));
          root.dataset.lastFigureMs = (performance.now() - t0).toFixed(0);
          download(bytes, `circuitboard-${name}.${format}`, format === "svg" ? "image/svg+xml" : "image/png");
        } catch (err) {
          console.error("[circuitboard] figure failed", err);
          b.title = `The figure failed: ${String((err as Error).message ?? err)}`;
        } finally {
          b.disabled = false;
          b.textContent = label;
          b.removeAttribute("aria-busy");
        }
      }, { signal: abort.signal });
      box.appendChild(b);
    }
    header.appendChild(box);
  }
  const onMsg = async (msg: { kind?: string; id?: number; format?: "png" | "svg"; scale?: number }) => {
    if (!msg || msg.kind !== "figure") return;
    try {
      if (!root) throw new Error("this view has no figure");
      const bytes = await figureBytes(root, msg.format === "svg" ? "svg" : "png", msg.scale ?? 2);
      model.send({ kind: "figure-reply", id: msg.id, ok: true, format: msg.format }, undefined, [bytes]);
    } catch (err) {
      model.send({ kind: "figure-reply", id: msg.id, ok: false, error: String((err as Error).message ?? err) });
    }
  };
  model.on("msg:custom", onMsg);
  return () => {
    abort.abort();
    model.off("msg:custom", onMsg);
  };
}
