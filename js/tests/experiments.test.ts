import { describe, expect, it } from "vitest";
import { panelMax, ramp } from "../src/views/causal_trace";
import { diffLines, shortTime } from "../src/views/experiments";

describe("experiments view helpers", () => {
  it("classifies unified-diff lines", () => {
    const diff = "--- a v1\n+++ b v2\n@@ -1,2 +1,2 @@\n def f(x):\n-    return x + 1\n+    return x + 2\n";
    expect(diffLines(diff).map((l) => l.kind)).toEqual(["file", "file", "hunk", "ctx", "del", "add"]);
    expect(diffLines(diff)[4].text).toBe("-    return x + 1");
  });

  it("shortens ISO UTC timestamps", () => {
    expect(shortTime("2026-12-06T09:45:01.123456+00:00")).toBe("2026-12-06 09:45:01");
  });
});

describe("causal trace helpers", () => {
  it("ramps from the background to the hue", () => {
    const lut = ramp([0, 109, 44], false);
    expect(Array.from(lut.slice(0, 4))).toEqual([255, 255, 255, 255]);
    expect(Array.from(lut.slice(255 * 4, 255 * 4 + 4))).toEqual([0, 109, 44, 255]);
  });

  it("takes a panel's max over finite values, never zero", () => {
    const v = new Float32Array([0.1, Number.NaN, 0.5, -2, 0.9, 0.2]);
    expect(panelMax(v, 0, 3)).toBeCloseTo(0.5);
    expect(panelMax(v, 3, 3)).toBeCloseTo(0.9);
    expect(panelMax(new Float32Array([0, -1]), 0, 2)).toBeGreaterThan(0);
  });
});
