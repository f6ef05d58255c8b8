import { describe, expect, it } from "vitest";
import { graphLayout } from "../src/views/graph";

// nodes: [kind, layer, pos, index, activation, influence]
const nodes = new Float32Array([
  1, 0, 1, 5, 1, 0.5, // neuron L0 @1
  1, 0, 1, 6, -1, 0.2, // another neuron in the same cell
  0, -1, 0, 7, 0, 0, // token 0
  0, -1, 1, 8, 0, 0, // token 1
  3, 2, 1, 0, 3, 0, // logit (layer = n_layers = 2) at the last position
]);

describe("graphLayout", () => {
  it("puts tokens at the bottom, logits on top, one column per token", () => {
    const lay = graphLayout(nodes, 2, 2);
    expect(lay.y[2]).toBeGreaterThan(lay.y[0]); // tokens below layer 0
    expect(lay.y[4]).toBeLessThan(lay.y[0]); // logits above
    expect(lay.x[3]).toBeGreaterThan(lay.x[2]); // token 1 right of token 0
    expect(Math.abs(lay.x[2] - (lay.axis + lay.col / 2))).toBeLessThan(1e-3);
  });
  it("spreads nodes sharing a (layer, position) cell inside it", () => {
    const lay = graphLayout(nodes, 2, 2);
    expect(lay.x[0]).not.toBe(lay.x[1]);
    expect(lay.y[0]).toBe(lay.y[1]);
    for (const i of [0, 1]) {
      expect(lay.x[i]).toBeGreaterThan(lay.axis + lay.col);
      expect(lay.x[i]).toBeLessThan(lay.axis + 2 * lay.col);
    }
  });
});
