// An image capture's tokens: CLS beside the image, cut into its patch grid. The same interface
// as TokenStrip (paint, mark, hover, click), so a view shows a ViT input where it shows a prompt.
import { decode } from "./codec";
import { el } from "./dom";
import { cssColor, type Lut, textOn } from "./colormaps";
import { type TokenPaint, type TokenStripEvents, NAN_PAINT, TokenStrip } from "./tokens";
import type { Encoded } from "./types";

/** What a view's `image` trait holds: grid, patch side and the pixels ([C, H, W] in [0, 1]). */
export interface ImageInfo {
  grid: [number, number];
  patch: number;
  pixels: Encoded;
}

const CELL = 36; // display pixels per patch side

export class PatchGrid {
  readonly el: HTMLDivElement;
  readonly virtual = false;
  private cells: HTMLElement[] = []; // token i → its cell (0: CLS)
  private paint: TokenPaint | null = null;

  constructor(
    private tokens: string[], image: ImageInfo, events: TokenStripEvents, signal: AbortSignal,
    cell: number = CELL, // display pixels per patch side (small multiples use less)
  ) {
    const [rows, cols] = image.grid;
    if (tokens.length !== 1 + rows * cols) {
      throw new Error(`[circuitboard] an image of ${rows}×${cols} patches needs ${1 + rows * cols} tokens; got ${tokens.length}`);
    }
    this.el = document.createElement("div");
    this.el.className = "cb-tokens cb-patches";
    this.el.dataset.n = String(tokens.length);
    const cls = el("span", "cb-token cb-patch-cls", this.el);
    cls.textContent = tokens[0]; // text, never HTML
    cls.dataset.i = "0";
    cls.title = "#0 the CLS token: the classifier reads it";
    this.cells.push(cls);
    const frame = el("div", "cb-patch-frame", this.el);
    frame.style.width = `${cols * cell}px`;
    frame.style.height = `${rows * cell}px`;
    frame.appendChild(drawPixels(image));
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const i = 1 + r * cols + c;
        const box = el("div", "cb-token cb-patch", frame);
        box.style.left = `${c * cell}px`;
        box.style.top = `${r * cell}px`;
        box.style.width = box.style.height = `${cell}px`;
        box.dataset.i = String(i);
        box.title = `#${i} patch row ${r}, column ${c}`;
        this.cells.push(box);
      }
    }
    const indexOf = (ev: Event) => {
      const t = (ev.target as HTMLElement | null)?.closest?.(".cb-token") as HTMLElement | null;
      return t?.dataset.i !== undefined ? Number(t.dataset.i) : null;
    };
    this.el.addEventListener("pointerover", (ev) => events.hover(indexOf(ev)), { signal });
    this.el.addEventListener("pointerleave", () => events.hover(null), { signal });
    this.el.addEventListener("click", (ev) => {
      const i = indexOf(ev);
      if (i !== null) events.click(i);
    }, { signal });
  }

  get length(): number {
    return this.tokens.length;
  }

  get liveCount(): number {
    return this.cells.length;
  }

  paintWith(paint: TokenPaint | null): void {
    this.paint = paint;
    this.cells.forEach((cell, i) => {
      const p = this.paint?.(i) ?? null;
      // A heat overlay: the pixels stay visible under the colour.
      cell.style.background = p ? p.bg : "";
      cell.classList.toggle("cb-patch-painted", p !== null);
      cell.classList.toggle("cb-token-nan", p?.nan === true);
      if (i === 0) cell.style.color = p ? p.fg : "";
    });
  }

  color(values: ArrayLike<number> | null, lut: Lut, toUnit: (v: number) => number): void {
    if (!values) return this.paintWith(null);
    this.paintWith((i) => {
      if (!Number.isFinite(values[i])) return NAN_PAINT;
      const t = toUnit(values[i]);
      return { bg: cssColor(lut, t), fg: textOn(lut, t) };
    });
  }

  mark(i: number | null, cls: string): void {
    for (const c of this.cells) c.classList.remove(cls);
    if (i !== null && i >= 0 && i < this.cells.length) this.cells[i].classList.add(cls);
  }

  span(i: number): HTMLElement | undefined {
    return this.cells[i];
  }

  reveal(_i: number): void {} // the whole grid is always in view
}

/** The image at its true pixels (nearest-neighbour scaling), on a canvas under the cells. */
function drawPixels(image: ImageInfo): HTMLCanvasElement {
  const t = decode(image.pixels);
  const [C, H, W] = t.shape;
  const canvas = document.createElement("canvas");
  canvas.className = "cb-patch-image";
  canvas.width = W;
  canvas.height = H;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `the input image, ${W}×${H} pixels`);
  const ctx = canvas.getContext("2d");
  if (ctx) {
    const img = ctx.createImageData(W, H);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const o = (y * W + x) * 4;
        for (let k = 0; k < 3; k++) {
          const v = t.data[(C === 1 ? 0 : k) * H * W + y * W + x];
          img.data[o + k] = Number.isFinite(v) ? Math.round(Math.min(1, Math.max(0, v)) * 255) : 255;
        }
        img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }
  return canvas;
}

/** A token strip for text, or the patch grid when the view's model carries an image. */
export function tokenStrip(
  tokens: string[], image: ImageInfo | null | undefined, events: TokenStripEvents, signal: AbortSignal,
): TokenStrip | PatchGrid {
  return image && image.grid ? new PatchGrid(tokens, image, events, signal) : new TokenStrip(tokens, events, signal);
}

