import { describe, expect, it } from "vitest";
import { layoutFor, patchRange, showToken } from "../src/views/patching";

describe("patching view layout", () => {
  it("puts positions on rows and layers on columns for per-position sites", () => {
    const lay = layoutFor(["layer", "position"], [3, 5]);
    expect([lay.rows, lay.cols, lay.rowKind, lay.colKind]).toEqual([5, 3, "position", "layer"]);
    expect(lay.index(4, 2, 0)).toBe(2 * 5 + 4); // values[layer 2, position 4]
  });
  it("indexes one head of [layer, position, head]", () => {
    const lay = layoutFor(["layer", "position", "head"], [2, 3, 4]);
    expect(lay.index(1, 1, 3)).toBe((1 * 3 + 1) * 4 + 3);
  });
  it("keeps layers × heads and layers × neurons", () => {
    expect(layoutFor(["layer", "head"], [30, 9]).index(2, 5, 0)).toBe(23);
    const n = layoutFor(["layer", "neuron"], [2, 1536]);
    expect([n.rows, n.cols, n.colKind]).toEqual([2, 1536, "neuron"]);
  });
});

describe("patching colour range and tokens", () => {
  it("is symmetric and always includes 1 (clean)", () => {
    expect(patchRange([0.2, -0.5])).toBe(1);
    expect(patchRange([0.2, -1.7, Number.NaN])).toBe(1.7);
  });
  it("shows whitespace visibly and never an empty label", () => {
    expect(showToken(" John")).toBe("␣John");
    expect(showToken("\n")).toBe("↵");
    expect(showToken("")).toBe("∅");
  });
});
