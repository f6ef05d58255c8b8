import { describe, expect, it } from "vitest";
import { kpiMatrix, rowScaled } from "../src/views/training";

describe("kpiMatrix", () => {
  // [S=2 steps, C=2 categories, N=2 tensors, K=2 stats], value = 1000s + 100c + 10n + k
  const shape = [2, 2, 2, 2];
  const data = new Float32Array(16);
  for (let s = 0; s < 2; s++)
    for (let c = 0; c < 2; c++)
      for (let n = 0; n < 2; n++) for (let k = 0; k < 2; k++) data[((s * 2 + c) * 2 + n) * 2 + k] = 1000 * s + 100 * c + 10 * n + k;

  it("lays one KPI out as tensors × steps", () => {
    expect(Array.from(kpiMatrix(data, shape, 1, -1, 1))).toEqual([101, 1101, 111, 1111]);
  });

  it("subtracts a second category", () => {
    expect(Array.from(kpiMatrix(data, shape, 1, 0, 0))).toEqual([100, 100, 100, 100]);
  });
});

describe("rowScaled", () => {
  it("maps each row to its own range, NaN kept", () => {
    const m = new Float32Array([1, 3, Number.NaN, 10, 10, 10]);
    const out = Array.from(rowScaled(m, 2, 3, false));
    expect(out.slice(0, 2)).toEqual([0, 1]);
    expect(Number.isNaN(out[2])).toBe(true);
    expect(out.slice(3)).toEqual([0.5, 0.5, 0.5]); // a constant row sits mid-scale
  });

  it("centres differences on ½ by the row's largest magnitude", () => {
    expect(Array.from(rowScaled(new Float32Array([-2, 1]), 1, 2, true))).toEqual([0, 0.75]);
  });
});
