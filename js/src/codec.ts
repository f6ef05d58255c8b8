// The only decoder of kernel tensors: {dtype, shape, lo, scale, data} → Float32Array.
import type { Encoded, Tensor } from "./types";

function bytesOf(data: DataView | ArrayBuffer | Uint8Array): Uint8Array {
  // Honour byteOffset: a DataView from Jupyter is usually a window into a larger buffer.
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

export function decode(enc: Encoded, buffers: DataView[] = []): Tensor {
  const raw = typeof enc.data === "number" ? buffers[enc.data] : enc.data;
  if (raw === undefined) throw new Error(`[circuitboard] tensor refers to missing buffer ${String(enc.data)}`);
  const bytes = bytesOf(raw);
  const n = enc.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  if (enc.dtype === "uint8") {
    if (bytes.length < n) throw new Error(`[circuitboard] uint8 tensor has ${bytes.length} bytes, expected ${n}`);
    for (let i = 0; i < n; i++) out[i] = enc.lo + bytes[i] * enc.scale;
  } else if (enc.dtype === "float16" || enc.dtype === "float32") {
    const width = enc.dtype === "float16" ? 2 : 4;
    if (bytes.length < n * width) {
      throw new Error(`[circuitboard] ${enc.dtype} tensor has ${bytes.length} bytes, expected ${n * width}`);
    }
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) {
      out[i] = width === 2 ? halfToFloat(dv.getUint16(2 * i, true)) : dv.getFloat32(4 * i, true);
    }
  } else {
    throw new Error(`[circuitboard] unknown tensor dtype ${String((enc as { dtype: unknown }).dtype)}`);
  }
  return { shape: enc.shape, data: out };
}

/** Raw uint8 codes without scaling, for views that colour directly from bytes. */
export function uint8View(enc: Encoded, buffers: DataView[] = []): Uint8Array {
  const raw = typeof enc.data === "number" ? buffers[enc.data] : enc.data;
  if (enc.dtype !== "uint8" || raw === undefined) throw new Error("[circuitboard] expected a uint8 tensor");
  return bytesOf(raw);
}
