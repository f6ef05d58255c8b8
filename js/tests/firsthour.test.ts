// Issue 14: the selection rule, a report's neuron blocks, one order for head scores.
import { describe, expect, it } from "vitest";
import { completeSelection } from "../src/link";
import { blockColumn, blockTop } from "../src/views/neurons";
import { scoreOrder } from "../src/views/attention";
import { smallSampleNote } from "../src/views/compare";

describe("completeSelection", () => {
  it("a layer belongs to its head or its neuron", () => {
    expect(completeSelection({ layer: 22, head: 4 })).toEqual({ layer: 22, head: 4, neuron: null });
    expect(completeSelection({ layer: 26, neuron: 1262 })).toEqual({ layer: 26, neuron: 1262, head: null });
    expect(completeSelection({ layer: 5 })).toEqual({ layer: 5, head: null, neuron: null });
    expect(completeSelection({ token: 3 })).toEqual({ token: 3 });
    expect(completeSelection({ head: null })).toEqual({ head: null });
  });
});

describe("neuron blocks", () => {
  // Two neurons over three positions, neuron-major, value = lo + code * scale; 255 = NaN.
  const block = {
    codes: new Uint8Array([127, 254, 0, 127, 200, 255]),
    lo: new Float32Array([-1, -2]),
    scale: new Float32Array([1 / 127, 2 / 127]),
    vmax: new Float32Array([1, 2]),
    n: 3,
  };
  it("decodes a column, zero exactly and NaN as NaN", () => {
    const a = blockColumn(block, 0);
    expect(a[0]).toBe(0);
    expect(a[1]).toBeCloseTo(1, 5);
    expect(a[2]).toBeCloseTo(-1, 5);
    expect(Number.isNaN(blockColumn(block, 1)[2])).toBe(true);
  });
  it("ranks the neurons at a token", () => {
    expect(blockTop(block, 1, 2).neurons).toEqual([1, 0]); // 1.15 > 1.0
    expect(blockTop(block, 2, 1).neurons).toEqual([0]); // NaN never ranks first
  });
});

describe("head scores and small samples", () => {
  it("lists scores in one order whatever the dict order", () => {
    expect(scoreOrder(["induction", "zeta", "previous_token", "alpha"])).toEqual(["previous_token", "induction", "alpha", "zeta"]);
  });
  it("marks tiny samples", () => {
    expect(smallSampleNote(4, 4)).toMatch(/tiny sample \(n = 4 vs 4\)/);
    expect(smallSampleNote(200, 300)).toBe("");
  });
});
