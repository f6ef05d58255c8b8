import { describe, expect, it } from "vitest";
import { rowOrder } from "../src/views/ablation";
import { headLabel, masked, topPairs } from "../src/views/composition";

describe("composition view helpers", () => {
  // 2 layers × 2 heads: writers of layer 0 (rows 0, 1) can reach readers of layer 1 (cols 2, 3)
  const v = new Float32Array(16).fill(0.5);
  v[0 * 4 + 3] = 0.9;
  v[1 * 4 + 2] = 0.1;
  it("greys pairs that cannot compose or fall below the threshold", () => {
    const m = masked(v, 4, 2, 0.3);
    expect(m[0 * 4 + 3]).toBeCloseTo(0.9);
    expect(Number.isNaN(m[1 * 4 + 2])).toBe(true); // below threshold
    expect(Number.isNaN(m[2 * 4 + 3])).toBe(true); // same layer
    expect(Number.isNaN(m[3 * 4 + 0])).toBe(true); // later writer
  });
  it("lists the strongest valid pairs", () => {
    expect(topPairs(v, 4, 2, 0.3, 2)).toEqual([[0, 3], [0, 2]]);
    expect(headLabel(3, 2)).toBe("L1H1");
  });
});

describe("ablation view helpers", () => {
  it("orders rows by |mean effect|", () => {
    const e = new Float32Array([0, 0, 5, 5, -1, -2]);
    expect(rowOrder(e, 3, 2)).toEqual([1, 2, 0]);
  });
});
