import { describe, expect, it } from "vitest";
import { aheadCells } from "../src/views/explain_panel";

describe("aheadCells", () => {
  it("takes every cell of a short prompt, the locked query first, then from the end", () => {
    const rows = aheadCells(4, () => 0, 1);
    expect(rows.map((r) => r.query)).toEqual([1, 3, 2, 0]);
    expect(rows.map((r) => r.keys)).toEqual([[0, 1], [0, 1, 2, 3], [0, 1, 2], [0]]);
  });

  it("takes each query's most-attended keys when the head has more cells than the budget", () => {
    const n = 10; // 55 cells; 20 allowed: 2 per row
    const weight = (q: number, k: number) => (k === q ? 1 : k === 0 ? 0.5 : 0.01 * k);
    const rows = aheadCells(n, weight, null, 20);
    expect(rows.map((r) => r.query)).toEqual([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    expect(rows[0].keys).toEqual([9, 0]);
    expect(rows[8].keys).toEqual([0, 1]); // short rows whole, in order
    expect(rows.reduce((a, r) => a + r.keys.length, 0)).toBeLessThanOrEqual(20);
  });

  it("never exceeds the budget, even with one key per row", () => {
    const rows = aheadCells(100, () => 0, null, 30);
    expect(rows.reduce((a, r) => a + r.keys.length, 0)).toBe(30);
    expect(rows.every((r) => r.keys.length === 1)).toBe(true);
  });
});
