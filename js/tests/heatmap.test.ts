import { describe, expect, it } from "vitest";
import { cellAtPlot, clampTransform, cssToUint32, fitTransform, renderWindow, zoomAbout } from "../src/heatmap";

describe("cell mapping", () => {
  it("fits a matrix into the plot with square cells", () => {
    expect(fitTransform(12, 12, 360, 360)).toEqual({ k: 30, x0: 0, y0: 0 });
    expect(fitTransform(4096, 4096, 360, 360).k).toBeCloseTo(360 / 4096);
  });

  it("maps plot pixels to cells and back", () => {
    const t = { k: 30, x0: 0, y0: 0 };
    expect(cellAtPlot(t, 12, 12, 0, 0)).toEqual({ row: 0, col: 0 });
    expect(cellAtPlot(t, 12, 12, 59.9, 30)).toEqual({ row: 1, col: 1 });
    expect(cellAtPlot(t, 12, 12, 359, 359)).toEqual({ row: 11, col: 11 });
    expect(cellAtPlot(t, 12, 12, 360, 10)).toBeNull();
    expect(cellAtPlot(t, 12, 12, -1, 10)).toBeNull();
    const panned = { k: 10, x0: -55, y0: -20 };
    expect(cellAtPlot(panned, 100, 100, 0, 0)).toEqual({ row: 2, col: 5 });
  });

  it("zooms about a point: the cell under it stays under it", () => {
    const t = { k: 2, x0: 0, y0: 0 };
    const z = zoomAbout(t, 4, 101, 51, 1, 64);
    expect(z.k).toBe(8);
    expect(cellAtPlot(z, 1000, 1000, 101, 51)).toEqual(cellAtPlot(t, 1000, 1000, 101, 51));
    expect(zoomAbout(t, 0.01, 0, 0, 1, 64).k).toBe(1); // clamped to the fit
  });

  it("clamps panning so the matrix keeps covering the plot", () => {
    expect(clampTransform({ k: 10, x0: 50, y0: -5000 }, 100, 100, 360, 360)).toEqual({ k: 10, x0: 0, y0: -640 });
    expect(clampTransform({ k: 1, x0: 50, y0: 50 }, 100, 100, 360, 360)).toEqual({ k: 1, x0: 0, y0: 0 });
  });
});

describe("renderWindow", () => {
  const lut32 = new Uint32Array(256).map((_, i) => i); // colour = code, to read back codes
  it("draws each cell as a k×k block when zoomed in", () => {
    const codes = new Uint8Array([1, 2, 3, 4]);
    const out = new Uint32Array(16);
    renderWindow(out, 4, 4, codes, 2, 2, { k: 2, x0: 0, y0: 0 }, lut32, 999);
    expect(Array.from(out)).toEqual([1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
  });

  it("keeps the max of the cells a pixel covers when zoomed out, background outside", () => {
    const codes = new Uint8Array(16);
    codes[1 * 4 + 2] = 200; // one sharp weight
    const out = new Uint32Array(9);
    renderWindow(out, 3, 3, codes, 4, 4, { k: 0.5, x0: 0, y0: 0 }, lut32, 999);
    expect(Array.from(out)).toEqual([0, 200, 999, 0, 0, 999, 999, 999, 999]);
  });

  it("masks cells above the diagonal of causal patterns as background", () => {
    const codes = new Uint8Array([1, 2, 3, 4]);
    const out = new Uint32Array(4);
    renderWindow(out, 2, 2, codes, 2, 2, { k: 1, x0: 0, y0: 0 }, lut32, 999, true);
    expect(Array.from(out)).toEqual([1, 999, 3, 4]);
  });

  it("packs CSS colours as ImageData's little-endian RGBA", () => {
    const px = new Uint8ClampedArray(new Uint32Array([cssToUint32("#102030")]).buffer);
    expect(Array.from(px)).toEqual([16, 32, 48, 255]);
  });
});
