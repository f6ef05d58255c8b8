// Draws a matrix on a canvas (one pixel per cell, scaled by CSS) and maps pointer → cell.
import type { Lut } from "./colormaps";

/** Paint `values` (row-major, rows × cols) through `lut`; `toUnit` maps a value to [0, 1]. */
export function paintMatrix(
  canvas: HTMLCanvasElement,
  rows: number,
  cols: number,
  values: ArrayLike<number>,
  lut: Lut,
  toUnit: (v: number) => number,
  nanColor: [number, number, number] = [255, 0, 255],
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
