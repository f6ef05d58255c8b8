import { describe, expect, it } from "vitest";
import { labelLines, layoutFlow, ranks } from "../src/views/training_graph";

describe("training data-flow graph layout", () => {
  it("ranks nodes by their longest path from a source, skip connections included", () => {
    // embed → up → act → down → unembed, and embed → unembed (a skip)
    const edges: [number, number][] = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 4]];
    expect(ranks(5, edges)).toEqual([0, 1, 2, 3, 4]);
    // two branches that merge: both branches share a column
    expect(ranks(4, [[0, 1], [0, 2], [1, 3], [2, 3]])).toEqual([0, 1, 1, 2]);
    // a cycle (a module used twice) still gets every node a column
    expect(ranks(3, [[0, 1], [1, 2], [2, 1]])).toEqual([0, 1, 2]);
  });

  it("labels drop the shared prefix and split before the last part", () => {
    expect(labelLines(["blocks.0.attn.hook_z", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])).toEqual([
      ["0.attn", "hook_z"],
      ["0", "hook_resid_post"],
      ["1", "hook_resid_post"],
    ]);
    expect(labelLines(["embed", "up"])).toEqual([["embed"], ["up"]]);
  });

  it("places columns left to right, branches one above the other, and arcs over skipped columns", () => {
    const L = layoutFlow(["a", "b", "c", "d"], [[0, 1], [0, 2], [1, 3], [2, 3], [0, 3]], (s) => 7 * s.length);
    expect(L.x[0]).toBeLessThan(L.x[1]);
    expect(L.x[1]).toBe(L.x[2]);
    expect(L.x[2]).toBeLessThan(L.x[3]);
    expect(L.y[1]).not.toBe(L.y[2]);
    expect(L.arcs).toEqual([false, false, false, false, true]);
    // the arc has room above the boxes
    expect(Math.min(...L.y)).toBeGreaterThanOrEqual(L.lift[4]);
    for (let v = 0; v < 4; v++) {
      expect(L.x[v] + L.w[v]).toBeLessThanOrEqual(L.width);
      expect(L.y[v] + L.h).toBeLessThanOrEqual(L.height);
    }
  });
});
