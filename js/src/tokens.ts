// The prompt as a strip of tokens: text only (never HTML), coloured by values, hover/click.
// Long prompts are virtualized: tokens live in blocks whose spans exist only near the view.
import { cssColor, type Lut, NAN_CSS, textOn } from "./colormaps";

export interface TokenStripEvents {
  hover(i: number | null): void;
  click(i: number): void;
}

export interface TokenStripOptions {
  /** Tokens per block (the unit of virtualization). */
  block?: number;
  /** Prompts up to this many tokens build every span at once (no virtualization). */
  eager?: number;
}

/** Background and text colour of token `i`, or null for the default look. */
export type TokenPaint = (i: number) => { bg: string; fg: string; nan?: boolean } | null;

/** NaN / ±inf tokens: magenta, as in heatmaps, and class `cb-token-nan`. */
export const NAN_PAINT = { bg: NAN_CSS, fg: "#fff", nan: true };

export const BLOCK = 256;
export const EAGER = 1024;

export class TokenStrip {
  readonly el: HTMLDivElement;
  readonly virtual: boolean;
  private blocks: HTMLDivElement[] = [];
  private live = new Map<number, HTMLSpanElement[]>(); // block index → its spans
  private heights = new Map<number, number>();
  private paint: TokenPaint | null = null;
  private marks = new Map<string, number>(); // class → token
  private observer: IntersectionObserver | null = null;
  private readonly blockSize: number;

  constructor(private tokens: string[], events: TokenStripEvents, signal: AbortSignal, opts: TokenStripOptions = {}) {
    this.blockSize = opts.block ?? BLOCK;
    this.virtual = tokens.length > (opts.eager ?? EAGER);
    this.el = document.createElement("div");
    this.el.className = "cb-tokens";
    this.el.dataset.n = String(tokens.length);
    if (this.virtual) this.el.dataset.virtual = "true";
    const nBlocks = Math.ceil(tokens.length / this.blockSize);
    for (let b = 0; b < nBlocks; b++) {
      const div = document.createElement("div");
      div.className = "cb-token-block";
      div.dataset.block = String(b);
      this.el.appendChild(div);
      this.blocks.push(div);
    }
    if (!this.virtual) {
      for (let b = 0; b < nBlocks; b++) this.materialize(b);
    } else {
      // Placeholders keep the scroll height; a rough first guess until a block is measured.
      for (const div of this.blocks) div.style.height = `${Math.ceil(this.blockSize / 10) * 23}px`;
      if (typeof IntersectionObserver !== "undefined") {
        this.observer = new IntersectionObserver((entries) => {
          for (const e of entries) {
            const b = Number((e.target as HTMLElement).dataset.block);
            if (e.isIntersecting) this.materialize(b);
            else this.release(b);
          }
        }, { root: this.el, rootMargin: "300px 0px" });
        for (const div of this.blocks) this.observer.observe(div);
      } else {
        this.materialize(0);
      }
      signal.addEventListener("abort", () => this.observer?.disconnect());
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

  /** Number of token spans currently in the DOM. */
  get liveCount(): number {
    let n = 0;
    for (const spans of this.live.values()) n += spans.length;
    return n;
  }

  private materialize(b: number): void {
    if (this.live.has(b)) return;
    const div = this.blocks[b];
    const start = b * this.blockSize;
    const end = Math.min(this.tokens.length, start + this.blockSize);
    const frag = document.createDocumentFragment();
    const spans: HTMLSpanElement[] = [];
    for (let i = start; i < end; i++) {
      const t = this.tokens[i];
      const s = document.createElement("span");
      s.className = "cb-token";
      s.textContent = t; // text, never HTML
      if (t.trim() === "") s.classList.add("cb-token-blank");
      s.dataset.i = String(i);
      s.title = `#${i} ${JSON.stringify(t)}`;
      this.paintSpan(s, i);
      frag.appendChild(s);
      spans.push(s);
    }
    for (const [cls, i] of this.marks) if (i >= start && i < end) spans[i - start].classList.add(cls);
    div.appendChild(frag);
    this.live.set(b, spans);
    if (this.virtual) {
      div.style.height = "";
      const h = div.offsetHeight;
      if (h > 0) {
        this.heights.set(b, h);
        // Refine the guess for blocks never seen, so the scrollbar stays honest.
        for (let o = 0; o < this.blocks.length; o++) {
          if (!this.live.has(o) && !this.heights.has(o)) this.blocks[o].style.height = `${h}px`;
        }
      }
    }
    this.el.dataset.live = String(this.liveCount);
  }

  private release(b: number): void {
    const spans = this.live.get(b);
    if (!spans) return;
    const div = this.blocks[b];
    const h = div.offsetHeight;
    if (h > 0) this.heights.set(b, h);
    div.style.height = `${this.heights.get(b) ?? h}px`;
    div.replaceChildren();
    this.live.delete(b);
    this.el.dataset.live = String(this.liveCount);
  }

  private paintSpan(s: HTMLSpanElement, i: number): void {
    const p = this.paint?.(i) ?? null;
    s.style.background = p ? p.bg : "";
    s.style.color = p ? p.fg : "";
    s.classList.toggle("cb-token-nan", p?.nan === true);
  }

  /** Colour every token through `paint` (null restores the default look). */
  paintWith(paint: TokenPaint | null): void {
    this.paint = paint;
    for (const [b, spans] of this.live) {
      const start = b * this.blockSize;
      spans.forEach((s, k) => this.paintSpan(s, start + k));
    }
  }

  /** Colour token backgrounds; `values[i]` mapped to [0, 1] by `toUnit`; null clears. */
  color(values: ArrayLike<number> | null, lut: Lut, toUnit: (v: number) => number): void {
    if (!values) {
      this.paintWith(null);
      return;
    }
    this.paintWith((i) => {
      if (!Number.isFinite(values[i])) return NAN_PAINT;
      const t = toUnit(values[i]);
      return { bg: cssColor(lut, t), fg: textOn(lut, t) };
    });
  }

  /** Put class `cls` on token `i` only (null removes it everywhere). */
  mark(i: number | null, cls: string): void {
    const prev = this.marks.get(cls);
    if (prev !== undefined) this.spanIfLive(prev)?.classList.remove(cls);
    for (const s of this.el.querySelectorAll(`.${cls}`)) s.classList.remove(cls);
    if (i === null || i < 0 || i >= this.tokens.length) {
      this.marks.delete(cls);
      return;
    }
    this.marks.set(cls, i);
    this.spanIfLive(i)?.classList.add(cls);
  }

  private spanIfLive(i: number): HTMLSpanElement | undefined {
    const b = Math.floor(i / this.blockSize);
    return this.live.get(b)?.[i - b * this.blockSize];
  }

  /** The span of token `i` (built on demand when its block is virtualized away). */
  span(i: number): HTMLSpanElement | undefined {
    if (i < 0 || i >= this.tokens.length) return undefined;
    const b = Math.floor(i / this.blockSize);
    this.materialize(b);
    return this.live.get(b)?.[i - b * this.blockSize];
  }

  /** Scroll the strip (only the strip, never the page) so token `i` is visible. */
  reveal(i: number): void {
    const s = this.span(i);
    if (!s || this.el.scrollHeight <= this.el.clientHeight) return;
    const top = s.offsetTop; // the strip is position: relative, so this is within it
    if (top < this.el.scrollTop || top + s.offsetHeight > this.el.scrollTop + this.el.clientHeight) {
      this.el.scrollTop = Math.max(0, top - this.el.clientHeight / 2);
    }
  }
}
