// 256-entry RGBA lookup tables for canvas drawing and CSS colours for token backgrounds.
import { interpolateBlues, interpolateRdBu, interpolateViridis } from "d3-scale-chromatic";

export type Lut = Uint8ClampedArray; // 256 × RGBA

/** NaN / ±inf are drawn magenta everywhere (heatmaps, thumbnails, token backgrounds). */
export const NAN_RGB: [number, number, number] = [255, 0, 255];
export const NAN_RGBA = new Uint8ClampedArray([...NAN_RGB, 255]);
export const NAN_CSS = `rgb(${NAN_RGB.join(", ")})`;

function parse(css: string): [number, number, number] {
  const m = css.match(/\d+(\.\d+)?/g);
  if (css.startsWith("#")) {
    const n = Number.parseInt(css.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }
  return m ? [Number(m[0]), Number(m[1]), Number(m[2])] : [0, 0, 0];
}

function build(interp: (t: number) => string, from = 0, to = 1): Lut {
  const lut = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const [r, g, b] = parse(interp(from + ((to - from) * i) / 255));
    lut.set([r, g, b, 255], 4 * i);
  }
  return lut;
}

const cache = new Map<string, Lut>();
function memo(name: string, make: () => Lut): Lut {
  let lut = cache.get(name);
  if (!lut) cache.set(name, (lut = make()));
  return lut;
}

/** Sequential map for probabilities: the same blues in both themes, so a head reads the same
 * in a light and a dark figure. Light: white → dark blue; dark: the page background → light
 * blue (low weights recede into the page, high ones stand out as the darkest do on white). */
export function sequential(dark: boolean): Lut {
  return dark ? memo("blues-dark", darkBlues) : memo("blues", () => build(interpolateBlues, 0.02, 1));
}

function darkBlues(): Lut {
  const bg: [number, number, number] = [13, 17, 23]; // --cb-bg of the dark theme
  const lut = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    // Blues from its saturated end towards its light end, faded in from the background.
    const [r, g, b] = parse(interpolateBlues(1 - 0.8 * t));
    const w = Math.min(1, t * 1.6);
    lut.set([bg[0] + w * (r - bg[0]), bg[1] + w * (g - bg[1]), bg[2] + w * (b - bg[2]), 255], 4 * i);
  }
  return lut;
}

/** Viridis, for views that want a perceptually uniform map (not the default). */
export function viridis(): Lut {
  return memo("viridis", () => build(interpolateViridis));
}

/** Diverging map centred at 0: red negative, blue positive. */
export function diverging(): Lut {
  return memo("rdbu", () => build(interpolateRdBu, 0.05, 0.95));
}

/** CSS colour of a LUT entry; `t` in [0, 1]. */
export function cssColor(lut: Lut, t: number): string {
  const i = 4 * Math.max(0, Math.min(255, Math.round((Number.isFinite(t) ? t : 0) * 255)));
  return `rgb(${lut[i]},${lut[i + 1]},${lut[i + 2]})`;
}

/** Readable text colour over a LUT entry. */
export function textOn(lut: Lut, t: number): string {
  const i = 4 * Math.max(0, Math.min(255, Math.round((Number.isFinite(t) ? t : 0) * 255)));
  const lum = 0.299 * lut[i] + 0.587 * lut[i + 1] + 0.114 * lut[i + 2];
  return lum > 150 ? "#111" : "#fff";
}
