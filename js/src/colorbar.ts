// A colour bar: the exact colours of a LUT between two labelled values (views and figures).
import type { Lut } from "./colormaps";
import { el } from "./dom";
import { paintCodes } from "./heatmap";

const RAMP = new Uint8Array(256).map((_, i) => i);

export class ColorBar {
  readonly el: HTMLDivElement;
  private readonly name: HTMLSpanElement;
  private readonly lo: HTMLSpanElement;
  private readonly ramp: HTMLCanvasElement;
  private readonly hi: HTMLSpanElement;

  constructor(parent: HTMLElement, label: string) {
    this.el = el("div", "cb-colorbar", parent);
    this.name = el("span", "cb-colorbar-name", this.el);
    this.name.textContent = label;
    this.lo = el("span", "", this.el);
    this.ramp = el("canvas", "", this.el);
    this.ramp.setAttribute("role", "img");
    this.hi = el("span", "", this.el);
  }

  /** Show `lut` from `lo` (code 0) to `hi` (code 255); `note` follows the label (e.g. "√ scale"). */
  set(lut: Lut, lo: string, hi: string, label?: string): void {
    paintCodes(this.ramp, 1, 256, RAMP, lut);
    this.lo.textContent = lo;
    this.hi.textContent = hi;
    if (label !== undefined) this.name.textContent = label;
    this.ramp.setAttribute("aria-label", `colour scale from ${lo} to ${hi}`);
    this.el.dataset.lo = lo;
    this.el.dataset.hi = hi;
  }
}
