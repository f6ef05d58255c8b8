import { describe, expect, it } from "vitest";
import { klShade, topAbs } from "../src/views/generation";

describe("generation view helpers", () => {
  it("maps KL (nats) to a colour position: 0 stays 0, large values saturate", () => {
    expect(klShade(0)).toBe(0);
    expect(klShade(-1e-9)).toBe(0);
    expect(klShade(Math.LN2)).toBeCloseTo(0.5, 6);
    expect(klShade(50)).toBeCloseTo(1, 6);
    expect(klShade(Number.NaN)).toBe(0);
  });

  it("orders components by absolute value", () => {
    expect(topAbs([0.1, -3, 2, 0], 2)).toEqual([1, 2]);
    expect(topAbs(new Float32Array([1, -1, 0.5]), 5)).toEqual([0, 1, 2]);
  });
});
