import { describe, expect, it } from "vitest";
import { activeFeatures, featureColumn, searchFeatures, type Sparse, topAt } from "../src/views/features";

// 3 tokens; feature 7 fires at 0 and 2, feature 2 at 2, feature 40 at 1
const s: Sparse = {
  rows: new Float32Array([0, 1, 2, 2]),
  cols: new Float32Array([7, 40, 2, 7]),
  values: new Float32Array([1.5, 0.25, 3, 0.5]),
  n: 3,
};

describe("features view data", () => {
  it("reads one feature's column, zeros where it is silent", () => {
    expect(Array.from(featureColumn(s, 7))).toEqual([1.5, 0, 0.5]);
    expect(Array.from(featureColumn(s, 9))).toEqual([0, 0, 0]);
  });

  it("lists the features at a token, strongest first", () => {
    expect(topAt(s, 2, 5)).toEqual({ features: [2, 7], values: [3, 0.5] });
    expect(topAt(s, 2, 1).features).toEqual([2]);
  });

  it("ranks the active features by their maximum", () => {
    expect(activeFeatures(s).map((x) => x.feature)).toEqual([2, 7, 40]);
  });

  it("searches by index, by label and by 'fires on this token'", () => {
    const labels = { "7": "Dogs", "63": "dog food" };
    expect(searchFeatures(s, labels, 64, "#40", null).map((x) => x.feature)).toEqual([40]);
    expect(searchFeatures(s, labels, 64, "63", null)).toEqual([{ feature: 63, max: 0 }]);
    expect(searchFeatures(s, labels, 64, "99", null)).toEqual([]); // beyond d_sae
    expect(searchFeatures(s, labels, 64, "dog", null).map((x) => x.feature)).toEqual([7, 63]);
    expect(searchFeatures(s, labels, 64, "", 2).map((x) => x.feature)).toEqual([2, 7]);
  });
});
