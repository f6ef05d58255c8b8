import { describe, expect, it } from "vitest";
import { decode, expandTril, halfToFloat, storedCount, uint8View } from "../src/codec";
import type { Encoded } from "../src/types";

function enc(fields: Partial<Encoded>): Encoded {
  return { dtype: "uint8", shape: [2, 2], lo: 0, scale: 1 / 255, data: new Uint8Array(), ...fields } as Encoded;
}

describe("decode", () => {
  it("scales uint8 codes by lo and scale", () => {
    const t = decode(enc({ data: new Uint8Array([0, 51, 255, 102]), lo: 0, scale: 1 / 255 }));
    expect(t.shape).toEqual([2, 2]);
    expect(Array.from(t.data).map((v) => +v.toFixed(3))).toEqual([0, 0.2, 1, 0.4]);
  });

  it("honours the byteOffset of a DataView into a larger buffer", () => {
    const big = new Uint8Array([9, 9, 9, 1, 2, 3, 4, 9]);
    const dv = new DataView(big.buffer, 3, 4);
    expect(Array.from(decode(enc({ data: dv, lo: 0, scale: 1 })).data)).toEqual([1, 2, 3, 4]);
    expect(Array.from(uint8View(enc({ data: dv })))).toEqual([1, 2, 3, 4]);
  });

  it("reads buffers by index, float16 and float32 little endian, also at an offset", () => {
    const f32 = new Float32Array([1.5, -2, 3.25, 0]);
    const padded = new Uint8Array(4 + f32.byteLength);
    padded.set(new Uint8Array(f32.buffer), 4);
    const t = decode(enc({ dtype: "float32", data: 0 }), [new DataView(padded.buffer, 4, 16)]);
    expect(Array.from(t.data)).toEqual([1.5, -2, 3.25, 0]);
    expect(halfToFloat(0x3c00)).toBe(1);
    expect(halfToFloat(0xc000)).toBe(-2);
    expect(Number.isNaN(halfToFloat(0x7e00))).toBe(true);
  });

  it("rejects short data and missing buffers with a [circuitboard] message", () => {
    expect(() => decode(enc({ data: new Uint8Array(3) }))).toThrow(/\[circuitboard\].*3 bytes, expected 4/);
    expect(() => decode(enc({ data: 2 }), [])).toThrow(/missing buffer 2/);
  });
});

describe("tril packing", () => {
  it("counts stored elements", () => {
    expect(storedCount([3, 3], true)).toBe(6);
    expect(storedCount([2, 4, 4], true)).toBe(20);
    expect(storedCount([2, 4, 4])).toBe(32);
  });

  it("expands row-by-row lower triangles of a batch, filling above the diagonal", () => {
    const packed = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    const out = expandTril(packed, [2, 3, 3], 0);
    expect(Array.from(out)).toEqual([1, 0, 0, 2, 3, 0, 4, 5, 6, 7, 0, 0, 8, 9, 0, 10, 11, 12]);
  });

  it("uint8View expands tril tensors with the code of zero; decode gives 0 above the diagonal", () => {
    const bytes = new Uint8Array([7, 255, 0, 100, 50, 5, 128]); // offset 1
    const dv = new DataView(bytes.buffer, 1, 6);
    const e = enc({ shape: [3, 3], tril: true, data: dv, lo: 0, scale: 1 / 255 });
    expect(Array.from(uint8View(e))).toEqual([255, 0, 0, 0, 100, 0, 50, 5, 128]);
    const t = decode(e);
    expect(t.shape).toEqual([3, 3]);
    expect(t.data[1]).toBe(0);
    expect(t.data[0]).toBeCloseTo(1, 5);
    expect(t.data[8]).toBeCloseTo(128 / 255, 5);
  });

  it("rejects non-square and short tril data", () => {
    expect(() => expandTril(new Uint8Array(6), [3, 2], 0)).toThrow(/square/);
    expect(() => uint8View(enc({ shape: [3, 3], tril: true, data: new Uint8Array(5) }))).toThrow(/expected 6/);
  });
});

describe("non-finite uint8 codes", () => {
  it("decodes the flagged code as NaN and the rest by lo + code * scale", () => {
    const t = decode({ dtype: "uint8", shape: [3], lo: 0, scale: 1 / 254, data: new Uint8Array([0, 255, 254]), nonfinite: 255 });
    expect(Number.isNaN(t.data[1])).toBe(true);
    expect(t.data[0]).toBe(0);
    expect(t.data[2]).toBeCloseTo(1, 6);
  });
  it("without the flag, 255 is an ordinary value", () => {
    const t = decode({ dtype: "uint8", shape: [1], lo: 0, scale: 1 / 255, data: new Uint8Array([255]) });
    expect(t.data[0]).toBeCloseTo(1, 6);
  });
});
