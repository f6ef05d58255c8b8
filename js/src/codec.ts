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

function rawBytes(enc: Encoded, buffers: DataView[]): Uint8Array {
  const raw = typeof enc.data === "number" ? buffers[enc.data] : enc.data;
  if (raw === undefined) throw new Error(`[circuitboard] tensor refers to missing buffer ${String(enc.data)}`);
  return bytesOf(raw);
}

/** Number of stored elements: the full size, or the lower triangles when `tril` is set. */
export function storedCount(shape: number[], tril = false): number {
  if (!tril) return shape.reduce((a, b) => a * b, 1);
  const n = shape[shape.length - 1];
  const m = shape.slice(0, -2).reduce((a, b) => a * b, 1);
  return (m * n * (n + 1)) / 2;
}

/**
 * Expand row-by-row lower triangles (diagonal included) of `[..., n, n]` matrices into full
 * matrices; cells above the diagonal get `fill`.
 */
export function expandTril<T extends Uint8Array | Float32Array>(packed: T, shape: number[], fill: number): T {
  const n = shape[shape.length - 1];
  if (shape.length < 2 || shape[shape.length - 2] !== n) {
    throw new Error(`[circuitboard] tril tensor must be square in its last two dims; got shape [${shape.join(", ")}]`);
  }
  const m = shape.slice(0, -2).reduce((a, b) => a * b, 1);
  const need = storedCount(shape, true);
  if (packed.length < need) throw new Error(`[circuitboard] tril tensor has ${packed.length} values, expected ${need}`);
  const out = new (packed.constructor as { new (n: number): T })(m * n * n);
  if (fill !== 0) out.fill(fill);
  let src = 0;
  for (let k = 0; k < m; k++) {
    const base = k * n * n;
    for (let r = 0; r < n; r++) {
      out.set(packed.subarray(src, src + r + 1), base + r * n);
      src += r + 1;
    }
  }
  return out;
}

export function decode(enc: Encoded, buffers: DataView[] = []): Tensor {
  if (enc.tril) {
    const flat = decode({ ...enc, tril: false, shape: [storedCount(enc.shape, true)] }, buffers);
    return { shape: enc.shape, data: expandTril(flat.data, enc.shape, 0) };
  }
  const bytes = rawBytes(enc, buffers);
  const n = enc.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  if (enc.dtype === "uint8") {
    if (bytes.length < n) throw new Error(`[circuitboard] uint8 tensor has ${bytes.length} bytes, expected ${n}`);
    const bad = enc.nonfinite ?? -1;
    for (let i = 0; i < n; i++) out[i] = bytes[i] === bad ? Number.NaN : enc.lo + bytes[i] * enc.scale;
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

/**
 * Raw uint8 codes without scaling, for views that colour directly from bytes. A `tril`
 * tensor is expanded to full matrices (cells above the diagonal get the code of 0).
 */
export function uint8View(enc: Encoded, buffers: DataView[] = []): Uint8Array {
  if (enc.dtype !== "uint8") throw new Error(`[circuitboard] expected a uint8 tensor, got ${String(enc.dtype)}`);
  const bytes = rawBytes(enc, buffers);
  if (!enc.tril) return bytes;
  const zero = enc.scale > 0 ? Math.max(0, Math.min(255, Math.round(-enc.lo / enc.scale))) : 0;
  return expandTril(bytes, enc.shape, zero);
}
