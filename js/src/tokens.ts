// The prompt as a strip of tokens: text only (never HTML), coloured by values, hover/click.
import { cssColor, type Lut, textOn } from "./colormaps";

export interface TokenStripEvents {
  hover(i: number | null): void;
  click(i: number): void;
}

export class TokenStrip {
  readonly el: HTMLDivElement;
  private spans: HTMLSpanElement[] = [];

  constructor(tokens: string[], events: TokenStripEvents, signal: AbortSignal) {
    this.el = document.createElement("div");
    this.el.className = "cb-tokens";
    const frag = document.createDocumentFragment();
    tokens.forEach((t, i) => {
      const s = document.createElement("span");
      s.className = "cb-token";
      s.textContent = t; // text, never HTML
      if (t.trim() === "") s.classList.add("cb-token-blank");
      s.dataset.i = String(i);
      s.title = `#${i} ${JSON.stringify(t)}`;
      frag.appendChild(s);
      this.spans.push(s);
    });
    this.el.appendChild(frag);
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

  /** Colour token backgrounds; `values[i]` mapped to [0, 1] by `toUnit`; null clears. */
  color(values: ArrayLike<number> | null, lut: Lut, toUnit: (v: number) => number): void {
    this.spans.forEach((s, i) => {
      if (!values) {
        s.style.background = "";
        s.style.color = "";
        return;
      }
      const t = toUnit(values[i]);
      s.style.background = cssColor(lut, t);
      s.style.color = textOn(lut, t);
    });
  }

  mark(i: number | null, cls: string): void {
    for (const s of this.el.querySelectorAll(`.${cls}`)) s.classList.remove(cls);
    if (i !== null && this.spans[i]) this.spans[i].classList.add(cls);
  }

  span(i: number): HTMLSpanElement | undefined {
    return this.spans[i];
  }
}
