import { describe, expect, it } from "vitest";
import { withOpacity } from "../src/figure";
import { mapCell } from "../src/views/patching";

describe("image patching figures", () => {
  it("keeps a translucent overlay translucent in exported figures", () => {
    expect(withOpacity("rgb(10, 20, 30)", 0.62)).toBe("rgba(10, 20, 30, 0.62)");
    expect(withOpacity("rgba(10, 20, 30, 0.5)", 0.5)).toBe("rgba(10, 20, 30, 0.25)");
    expect(withOpacity("rgb(10, 20, 30)", 1)).toBe("rgb(10, 20, 30)");
  });

  it("sizes each layer's patch grid to fit, within 10..28 px a patch", () => {
    expect(mapCell(4, 4)).toBe(28);
    expect(mapCell(12, 14)).toBe(10);
    expect(mapCell(4, 14)).toBe(10); // (180 - 60) / 14 = 8.6, raised to the 10 px floor
  });
});
