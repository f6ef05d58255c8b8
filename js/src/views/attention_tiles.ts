// A long prompt's head as a map: a pooled overview everywhere, full-resolution tiles where the
// view zoomed in. Pure helpers (no DOM) shared by the attention view and its tests.

/** Edges of min(n, size) near-equal blocks over n positions (Python's block_edges). */
export function blockEdges(n: number, size: number): Int32Array {
  const t = Math.max(1, Math.min(n, size));
  const e = new Int32Array(t + 1);
  for (let i = 0; i <= t; i++) e[i] = Math.floor((i * n) / t);
  return e;
}

/** Block index of every position for the given edges. */
export function blockOf(edges: Int32Array): Int32Array {
  const n = edges[edges.length - 1];
  const out = new Int32Array(n);
  for (let b = 0; b + 1 < edges.length; b++) out.fill(b, edges[b], edges[b + 1]);
  return out;
}

export interface TileRequest {
  kind: "fetch-tile";
  layer: number;
  head: number;
  q0: number;
  q1: number;
  k0: number;
  k1: number;
}

/**
 * The grid-aligned tile requests covering queries [r0, r1) × keys [c0, c1): Python's
 * `tile_requests`, so live replies are cached per tile and a report's embedded ones are found.
 * Causal heads skip tiles wholly above the diagonal. Every tile is tile² bytes, far under the
 * 10 MiB message cap, so a big region is always split.
 */
export function tilesFor(
  layer: number, head: number, r0: number, r1: number, c0: number, c1: number, n: number, tile: number, causal: boolean,
): TileRequest[] {
  const out: TileRequest[] = [];
  for (let q0 = Math.floor(Math.max(0, r0) / tile) * tile; q0 < Math.min(n, r1); q0 += tile) {
    for (let k0 = Math.floor(Math.max(0, c0) / tile) * tile; k0 < Math.min(n, c1); k0 += tile) {
      if (causal && k0 > q0 + tile - 1) continue;
      out.push({ kind: "fetch-tile", layer, head, q0, q1: Math.min(n, q0 + tile), k0, k1: Math.min(n, k0 + tile) });
    }
  }
  return out;
}

export interface Tile {
  q0: number;
  k0: number;
  rows: number;
  cols: number;
  codes: Uint8Array;
}

/** A head of n tokens held as an overview (side × side codes) and the tiles fetched so far. */
export class TiledHead {
  readonly tiles = new Map<string, Tile>();
  /** Tiles a report left out (never asked for again). */
  readonly missing = new Set<string>();
  private readonly of: Int32Array;
  readonly edges: Int32Array;

  constructor(readonly n: number, readonly overview: Uint8Array, readonly side: number, readonly tile: number) {
    this.edges = blockEdges(n, side);
    this.of = blockOf(this.edges);
  }

  add(t: Tile): void {
    this.tiles.set(`${t.q0 / this.tile}:${t.k0 / this.tile}`, t);
  }

  /** The tile holding cell (r, c), if fetched. */
  tileAt(r: number, c: number): Tile | undefined {
    return this.tiles.get(`${Math.floor(r / this.tile)}:${Math.floor(c / this.tile)}`);
  }

  /** Whether cell (r, c) is shown at full resolution. */
  full(r: number, c: number): boolean {
    return this.tileAt(r, c) !== undefined;
  }

  /** Code of one cell: from its tile when fetched, else its overview block. */
  code(r: number, c: number): number {
    const t = this.tileAt(r, c);
    if (t) return t.codes[(r - t.q0) * t.cols + (c - t.k0)];
    return this.overview[this.of[r] * this.side + this.of[c]];
  }

  /** Block of the overview holding position i: [first, last] positions. */
  blockRange(i: number): [number, number] {
    const b = this.of[i];
    return [this.edges[b], this.edges[b + 1] - 1];
  }

  /** Max code over cells [r0, r1) × [c0, c1): tiles where fetched, the overview elsewhere. */
  sample = (r0: number, r1: number, c0: number, c1: number): number => {
    const T = this.tile;
    const tr = Math.floor(r0 / T);
    const tc = Math.floor(c0 / T);
    if (Math.floor((r1 - 1) / T) === tr && Math.floor((c1 - 1) / T) === tc) {
      const t = this.tiles.get(`${tr}:${tc}`);
      if (t) {
        let m = 0;
        for (let r = r0; r < r1; r++) {
          const base = (r - t.q0) * t.cols - t.k0;
          for (let c = c0; c < c1; c++) {
            const v = t.codes[base + c];
            if (v > m) m = v;
          }
        }
        return m;
      }
    }
    const b0 = this.of[r0];
    const b1 = this.of[r1 - 1];
    const e0 = this.of[c0];
    const e1 = this.of[c1 - 1];
    let m = 0;
    for (let b = b0; b <= b1; b++) {
      const base = b * this.side;
      for (let e = e0; e <= e1; e++) {
        const v = this.overview[base + e];
        if (v > m) m = v;
      }
    }
    return m;
  };
}
