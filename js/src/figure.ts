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
  | { kind: "text"; x: number; y: number; text: string; font: string; fill: string };

export interface Figure {
  width: number;
  height: number;
  background: string;
  prims: Prim[];
}

const SKIP = "cb-figure-skip";

function visible(c: string | null | undefined): c is string {
  return !!c && c !== "transparent" && !/rgba\([^)]*,\s*0\)$/.test(c);
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
export function collect(root: HTMLElement): Figure {
  const R = root.getBoundingClientRect();
  const prims: Prim[] = [];
  const rel = (r: DOMRect): Box => ({ x: r.left - R.left, y: r.top - R.top, w: r.width, h: r.height });
  const clip = (b: Box) => b.w > 0 && b.h > 0 && b.x < R.width && b.y < R.height && b.x + b.w > 0 && b.y + b.h > 0;

  const textRuns = (node: Text, cs: CSSStyleDeclaration) => {
    const s = node.data;
    if (!s.trim()) return;
    const font = fontOf(cs);
    const range = document.createRange();
    range.selectNodeContents(node);
    const rects = [...range.getClientRects()].filter((r) => r.width > 0);
    if (rects.length === 0) return;
    const push = (text: string, r: DOMRect) => {
      const b = rel(r);
      if (clip(b)) prims.push({ kind: "text", x: b.x, y: baseline(font, b.y, b.h), text, font, fill: cs.color });
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

  const walk = (el: Element) => {
    if (el.classList.contains(SKIP) || (el as HTMLElement).hidden) return;
    const cs = getComputedStyle(el);
    if (cs.display === "none" || cs.visibility === "hidden") return;
    const b = rel(el.getBoundingClientRect());
    if (el !== root && clip(b)) {
      const fill = visible(cs.backgroundColor) ? cs.backgroundColor : null;
      const bw = Number.parseFloat(cs.borderTopWidth) || 0;
      const stroke = bw > 0 && cs.borderTopStyle !== "none" && visible(cs.borderTopColor) ? cs.borderTopColor : null;
      // An inset ring (the active-token marker) is drawn as a stroke.
      const ring = /inset/.test(cs.boxShadow) && /0px 0px 0px [1-9]/.test(cs.boxShadow) ? cs.boxShadow.match(/rgba?\([^)]*\)/)?.[0] : undefined;
      const shadow = visible(ring) ? ring : null;
      if (fill || stroke || shadow) {
        prims.push({ kind: "rect", ...b, fill, stroke: stroke ?? shadow, radius: Number.parseFloat(cs.borderTopLeftRadius) || 0 });
      }
    }
    if (clip(b) && cs.backgroundImage.startsWith("linear-gradient")) {
      const bar = gradientCanvas(cs.backgroundImage, Math.max(1, Math.round(b.w)), Math.max(1, Math.round(b.h)));
      if (bar) prims.push({ kind: "image", ...b, canvas: bar, pixelated: false });
    }
    if (el instanceof HTMLCanvasElement) {
      if (clip(b) && el.width > 0 && el.height > 0) prims.push({ kind: "image", ...b, canvas: el, pixelated: cs.imageRendering === "pixelated" });
      return;
    }
    if (el instanceof HTMLSelectElement || (el instanceof HTMLInputElement && /^(text|number|search|)$/.test(el.type))) {
      const text = el instanceof HTMLSelectElement ? (el.selectedOptions[0]?.textContent ?? "") : el.value;
      const font = fontOf(cs);
      prims.push({ kind: "text", x: b.x + (Number.parseFloat(cs.paddingLeft) || 0) + 2, y: baseline(font, b.y, b.h), text, font, fill: cs.color });
      return;
    }
    for (const child of el.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) textRuns(child as Text, cs);
      else if (child.nodeType === Node.ELEMENT_NODE) walk(child as Element);
    }
  };
  walk(root);
  const bg = getComputedStyle(root).backgroundColor;
  // Trim empty space on the right (views are as wide as their cell; figures are not).
  let right = 0;
  for (const p of prims) right = Math.max(right, p.kind === "text" ? p.x + textWidth(p.font, p.text) : p.x + p.w);
  const width = Math.min(Math.ceil(R.width), Math.ceil(right + 10));
  return { width, height: Math.ceil(R.height), background: visible(bg) ? bg : "#ffffff", prims };
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
    } else if (p.kind === "image") {
      const url = scaled(p, 2).toDataURL("image/png");
      out.push(`<image x="${p.x.toFixed(1)}" y="${p.y.toFixed(1)}" width="${p.w.toFixed(1)}" height="${p.h.toFixed(1)}" preserveAspectRatio="none" href="${url}"/>`);
    } else {
      out.push(`<text x="${p.x.toFixed(1)}" y="${p.y.toFixed(1)}" fill="${esc(p.fill)}" style="font:${esc(p.font)};white-space:pre" xml:space="preserve">${esc(p.text)}</text>`);
    }
  }
  out.push("</svg>");
  return out.join("\n");
}

/** The figure painted on a canvas at `scale` × CSS pixels, as PNG bytes. */
export async function toPng(fig: Figure, scale = 2): Promise<Uint8Array> {
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
    } else if (p.kind === "image") {
      ctx.imageSmoothingEnabled = !p.pixelated;
      ctx.drawImage(p.canvas, p.x, p.y, p.w, p.h);
    } else {
      ctx.font = p.font;
      ctx.fillStyle = p.fill;
      ctx.textBaseline = "alphabetic";
      ctx.fillText(p.text, p.x, p.y);
    }
  }
  const blob = await new Promise<Blob | null>((resolve) => c.toBlob(resolve, "image/png"));
  if (!blob) throw new Error("[circuitboard] the browser could not encode the PNG");
  return new Uint8Array(await blob.arrayBuffer());
}

export async function figureBytes(root: HTMLElement, format: "png" | "svg", scale = 2): Promise<Uint8Array> {
  const fig = collect(root);
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
        try {
          const bytes = await figureBytes(root, format, Number(root.dataset.cbFigureScale ?? 2));
          download(bytes, `circuitboard-${name}.${format}`, format === "svg" ? "image/svg+xml" : "image/png");
        } catch (err) {
          console.error("[circuitboard] figure failed", err);
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
