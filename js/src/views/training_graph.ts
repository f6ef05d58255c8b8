// The training view's data-flow graph: recorded tensors as boxes, left to right in the order
// data flows (a node's column is its longest path from a source), edges as curves, a skip
// connection over the nodes it skips as an arc above them. Drawn on a canvas by one painter
// that also writes the figure (SVG paths and text), so live and saved figures agree.

export interface FlowLayout {
  x: number[]; // left edge of each node's box, CSS px
  y: number[]; // top edge
  w: number[];
  h: number;
  rank: number[];
  lines: string[][]; // each node's label, one or two lines
  arcs: boolean[]; // per edge: drawn as an arc above (it skips a column)
  lift: number[]; // per edge: how far an arc rises above its ends
  from: number[]; // per arc: where along its source's top edge it leaves (0..1 of the width)
  into: number[]; // per arc: where along its target's top edge it lands
  width: number;
  height: number;
}

const NODE_H = 30;
const GAP_X = 26;
const GAP_Y = 12;
const PAD = 6;
export const GRAPH_FONT = "10.5px ui-monospace, SFMono-Regular, Menlo, monospace";

/** Each node's column: its longest path from a source (edges against the flow order, as
 * in a cycle through a module used twice, are left out of the ranking). */
export function ranks(n: number, edges: [number, number][]): number[] {
  const rank = new Array<number>(n).fill(0);
  const indeg = new Array<number>(n).fill(0);
  const out: number[][] = Array.from({ length: n }, () => []);
  for (const [a, b] of edges) {
    if (a === b) continue;
    out[a].push(b);
    indeg[b] += 1;
  }
  const done = new Array<boolean>(n).fill(false);
  const queue: number[] = [];
  for (let v = 0; v < n; v++) if (indeg[v] === 0) queue.push(v);
  const take = (v: number) => {
    done[v] = true;
    for (const b of out[v]) {
      if (done[b]) continue;
      rank[b] = Math.max(rank[b], rank[v] + 1);
      if (--indeg[b] === 0) queue.push(b);
    }
  };
  for (;;) {
    while (queue.length) take(queue.shift() as number);
    const left = done.indexOf(false); // a cycle: break it at its first node
    if (left < 0) break;
    take(left);
  }
  return rank;
}

/** Labels without the prefix every name shares (`blocks.`), split before the last part. */
export function labelLines(names: string[]): string[][] {
  const parts = names.map((n) => n.split("."));
  let common = 0;
  if (names.length > 1) {
    while (parts.every((p) => p.length > common + 1 && p[common] === parts[0][common])) common += 1;
  }
  return parts.map((p) => {
    const rest = p.slice(common);
    return rest.length > 1 ? [rest.slice(0, -1).join("."), rest[rest.length - 1]] : [rest.join(".") || "(model)"];
  });
}

/** Boxes and edge shapes for `names` and `edges` (indices); `measure` gives a text width. */
export function layoutFlow(names: string[], edges: [number, number][], measure: (s: string) => number): FlowLayout {
  const n = names.length;
  const rank = ranks(n, edges);
  const lines = labelLines(names);
  const w = lines.map((l) => Math.ceil(Math.max(...l.map(measure))) + 12);
  const cols = Math.max(0, ...rank) + 1;
  const members: number[][] = Array.from({ length: cols }, () => []);
  for (let v = 0; v < n; v++) members[rank[v]].push(v);
  // order within a column by the mean slot of the nodes feeding it (two sweeps)
  const slot = new Array<number>(n).fill(0);
  members.forEach((m) => m.forEach((v, i) => (slot[v] = i)));
  for (let sweep = 0; sweep < 2; sweep++) {
    for (const m of members) {
      const key = (v: number) => {
        const from = edges.filter(([a, b]) => b === v && rank[a] < rank[v]).map(([a]) => slot[a]);
        return from.length ? from.reduce((s, x) => s + x, 0) / from.length : slot[v];
      };
      const keyed = m.map((v) => [key(v), v] as const).sort((p, q) => p[0] - q[0] || p[1] - q[1]);
      keyed.forEach(([, v], i) => (slot[v] = i));
      m.sort((a, b) => slot[a] - slot[b]);
    }
  }
  const tall = Math.max(1, ...members.map((m) => m.length));
  const colW = members.map((m) => Math.max(0, ...m.map((v) => w[v])));
  // an edge that skips a column, between nodes on one row, rises over the nodes between
  const arcs = edges.map(([a, b]) => rank[b] - rank[a] > 1);
  const lift = edges.map(([a, b], i) => (arcs[i] ? 12 + 7 * Math.min(rank[b] - rank[a] - 1, 6) : 0));
  // arcs of one node nest: the longest leaves leftmost and lands rightmost
  const from = edges.map(() => 0.7);
  const into = edges.map(() => 0.3);
  const span = (i: number) => rank[edges[i][1]] - rank[edges[i][0]];
  for (let v = 0; v < n; v++) {
    const out = edges.map((_, i) => i).filter((i) => arcs[i] && edges[i][0] === v).sort((a, b) => span(b) - span(a) || a - b);
    out.forEach((i, k) => (from[i] = 0.55 + (0.4 * k) / Math.max(out.length, 1)));
    const inc = edges.map((_, i) => i).filter((i) => arcs[i] && edges[i][1] === v).sort((a, b) => span(b) - span(a) || a - b);
    inc.forEach((i, k) => (into[i] = 0.45 - (0.4 * k) / Math.max(inc.length, 1)));
  }
  const top = PAD + Math.max(0, ...lift);
  const x = new Array<number>(n).fill(0);
  const y = new Array<number>(n).fill(0);
  let left = PAD;
  members.forEach((m, c) => {
    const off = ((tall - m.length) * (NODE_H + GAP_Y)) / 2;
    for (const v of m) {
      x[v] = left + (colW[c] - w[v]) / 2;
      y[v] = top + off + slot[v] * (NODE_H + GAP_Y);
    }
    left += colW[c] + GAP_X;
  });
  const width = Math.ceil(left - GAP_X + PAD + 6);
  const height = Math.ceil(top + tall * (NODE_H + GAP_Y) - GAP_Y + PAD);
  return { x, y, w, h: NODE_H, rank, lines, arcs, lift, from, into, width, height };
}

export interface FlowPaint {
  fill: string[]; // per node
  text: string[]; // label colour per node
  highlight: number; // node outlined, -1 for none
  edge: string;
  stroke: string;
  mark: string;
}

/** Draw the graph (CSS px); used for the live canvas and for figures. */
export function paintFlow(ctx: CanvasRenderingContext2D, L: FlowLayout, edges: [number, number][], p: FlowPaint): void {
  ctx.lineWidth = 1.2;
  ctx.strokeStyle = p.edge;
  ctx.fillStyle = p.edge;
  edges.forEach(([a, b], i) => {
    if (a === b) return;
    let x0: number, y0: number, x1: number, y1: number, c0x: number, c0y: number, c1x: number, c1y: number;
    if (L.arcs[i]) {
      x0 = L.x[a] + L.w[a] * L.from[i];
      y0 = L.y[a];
      x1 = L.x[b] + L.w[b] * L.into[i];
      y1 = L.y[b];
      const up = Math.min(y0, y1) - L.lift[i] * 1.33;
      [c0x, c0y, c1x, c1y] = [x0 + 10, up, x1 - 10, up];
    } else {
      x0 = L.x[a] + L.w[a];
      y0 = L.y[a] + L.h / 2;
      x1 = L.x[b];
      y1 = L.y[b] + L.h / 2;
      const dx = Math.max(12, (x1 - x0) / 2);
      [c0x, c0y, c1x, c1y] = [x0 + dx, y0, x1 - dx, y1];
    }
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.bezierCurveTo(c0x, c0y, c1x, c1y, x1, y1);
    ctx.stroke();
    // arrowhead along the curve's last tangent
    const ang = Math.atan2(y1 - c1y, x1 - c1x);
    const s = 5.5;
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.lineTo(x1 - s * Math.cos(ang - 0.45), y1 - s * Math.sin(ang - 0.45));
    ctx.lineTo(x1 - s * Math.cos(ang + 0.45), y1 - s * Math.sin(ang + 0.45));
    ctx.closePath();
    ctx.fill();
  });
  ctx.font = GRAPH_FONT;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (let v = 0; v < L.x.length; v++) {
    ctx.fillStyle = p.fill[v];
    ctx.fillRect(L.x[v], L.y[v], L.w[v], L.h);
    ctx.strokeStyle = v === p.highlight ? p.mark : p.stroke;
    ctx.lineWidth = v === p.highlight ? 2.5 : 1;
    ctx.strokeRect(L.x[v], L.y[v], L.w[v], L.h);
    ctx.fillStyle = p.text[v];
    const ls = L.lines[v];
    const cx = L.x[v] + L.w[v] / 2;
    if (ls.length === 1) ctx.fillText(ls[0], cx, L.y[v] + L.h / 2);
    else {
      ctx.fillText(ls[0], cx, L.y[v] + L.h / 2 - 6.5);
      ctx.fillText(ls[1], cx, L.y[v] + L.h / 2 + 6.5);
    }
  }
}
