import { describe, expect, it } from "vitest";
import { blockEdges, TiledHead, tilesFor } from "../src/views/attention_tiles";

describe("tilesFor", () => {
  it("covers the lower triangle of a causal head with grid tiles (Python's tile_requests)", () => {
    const reqs = tilesFor(3, 4, 0, 8192, 0, 8192, 8192, 512, true);
    expect(reqs.length).toBe((16 * 17) / 2);
    for (const r of reqs) {
      expect((r.q1 - r.q0) * (r.k1 - r.k0)).toBe(512 * 512); // far under the 10 MiB cap
      expect(r.k0).toBeLessThanOrEqual(r.q0);
    }
  });

  it("splits a visible region into the same grid-aligned keys as Python", () => {
    const got = tilesFor(0, 0, 700, 1500, 100, 1300, 8192, 512, false).map((r) => [r.q0, r.k0]);
    expect(got).toEqual([[512, 0], [512, 512], [512, 1024], [1024, 0], [1024, 512], [1024, 1024]]);
    expect(tilesFor(0, 1, 0, 900, 0, 900, 1000, 512, true).map((r) => [r.q0, r.k0, r.q1, r.k1])).toEqual([
      [0, 0, 512, 512], [512, 0, 1000, 512], [512, 512, 1000, 1000],
    ]);
  });
});

describe("TiledHead", () => {
  it("reads the overview where no tile is loaded and the tile where it is", () => {
    expect(Array.from(blockEdges(10, 4))).toEqual([0, 2, 5, 7, 10]);
    const overview = new Uint8Array([10, 0, 20, 30]); // 2 x 2 blocks over 8 tokens
    const h = new TiledHead(8, overview, 2, 4);
    expect(h.code(5, 1)).toBe(20);
    expect(h.sample(0, 8, 0, 8)).toBe(30);
    expect(h.full(5, 1)).toBe(false);
    const codes = new Uint8Array(16).map((_, i) => i);
    h.add({ q0: 4, k0: 0, rows: 4, cols: 4, codes });
    expect(h.full(5, 1)).toBe(true);
    expect(h.code(5, 1)).toBe(5); // row 1, col 1 of the tile
    expect(h.sample(4, 6, 0, 2)).toBe(5); // max of the tile's top-left 2 x 2
    expect(h.sample(4, 8, 2, 6)).toBe(30); // spans two tiles: the overview's max
    expect(h.blockRange(5)).toEqual([4, 7]);
  });
});
