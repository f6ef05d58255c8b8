// Attribution graph view: tokens along x, layers along y (tokens at the bottom, logits on top),
// every kept edge drawn faintly and a node's edges on hover, head loadings of cross-position
// edges, pinned nodes grouped into supernodes, interventions run in the kernel.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { el } from "../dom";
import { Fetcher } from "../fetch";
import { resolveLink, select } from "../link";
import { followTheme } from "../theme";
import type { Encoded } from "../types";
import { ExplainPanel } from "./explain_panel";
import { visible } from "./lens";

interface Intervention {
  name?: string;
  nodes?: number[];
  factor?: number;
  metric?: string;
  metric_before?: number;
  metric_after?: number;
  top?: [string, number][];
}

interface GraphState {
  description: string;
  tokens: string[];
  n_layers: number;
  basis: string;
  n_nodes: number;
  logit_labels: string[];
  pinned: number[];
  supernodes: Record<string, number[]>;
  interventions: Intervention[];
  live: boolean;
  explainable?: boolean; // a head loading's click opens cb.explain_attention, computed in the kernel
  _nodes: Encoded;
  _edges: Encoded;
  _loadings: Encoded;
  theme: string;
  link: string;
}

export const KIND = { token: 0, basis: 1, error: 2, logit: 3 } as const;

export interface GraphLayout {
  width: number;
  height: number;
  axis: number;
  col: number;
  row: number;
  x: Float32Array;
  y: Float32Array;
}

/** Node centres: column = token position, row = layer (-1 tokens at the bottom, n_layers for
 * logits at the top); nodes sharing a cell spread across it. */
export function graphLayout(nodes: Float32Array, nTokens: number, nLayers: number): GraphLayout {
  const n = nodes.length / 6;
  const axis = 44;
  const col = Math.max(56, Math.min(110, Math.floor(1100 / Math.max(nTokens, 1))));
  const row = Math.max(14, Math.min(30, Math.floor(640 / (nLayers + 2))));
  const width = axis + col * nTokens + 8;
  const height = row * (nLayers + 2) + 8;
  const cells = new Map<string, number[]>();
  for (let i = 0; i < n; i++) {
    const key = `${nodes[6 * i + 1]},${nodes[6 * i + 2]}`;
    const list = cells.get(key);
    if (list) list.push(i);
    else cells.set(key, [i]);
  }
  const x = new Float32Array(n);
  const y = new Float32Array(n);
  for (const list of cells.values()) {
    list.forEach((i, j) => {
      const layer = nodes[6 * i + 1];
      const pos = nodes[6 * i + 2];
      x[i] = axis + pos * col + ((j + 1) * col) / (list.length + 1);
      y[i] = 4 + (nLayers - layer) * row + row / 2;
    });
  }
  return { width, height, axis, col, row, x, y };
}

function fmt(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return "–";
  return v.toPrecision(3).replace("-", "−");
}

export async function render(props: RenderProps<GraphState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const offline = document.getElementById("cb-state") !== null; // a saved report: no kernel
  const tokens = model.get("tokens");
  const L = model.get("n_layers");
  const nodes = decode(model.get("_nodes")).data;
  const edges = decode(model.get("_edges")).data;
  const loads = decode(model.get("_loadings")).data;
  const N = nodes.length / 6;
  const M = edges.length / 3;
  const lay = graphLayout(nodes, tokens.length, L);
  const labels = model.get("logit_labels");
  const unit = model.get("basis") === "neurons" ? "N" : "F";
  const label = (i: number): string => {
    const kind = nodes[6 * i];
    const layer = nodes[6 * i + 1];
    const pos = nodes[6 * i + 2];
    const idx = nodes[6 * i + 3];
    if (kind === KIND.token) return `token ${pos} ${JSON.stringify(visible(tokens[pos] ?? ""))}`;
    if (kind === KIND.logit) return `logit ${JSON.stringify(labels[idx] ?? "")}`;
    if (kind === KIND.error) return `L${layer} error @${pos}`;
    return `L${layer}${unit}${idx} @${pos}`;
  };
  // incoming / outgoing edge lists per node
  const inE: number[][] = Array.from({ length: N }, () => []);
  const outE: number[][] = Array.from({ length: N }, () => []);
  let maxW = 0;
  for (let e = 0; e < M; e++) {
    outE[edges[3 * e]].push(e);
    inE[edges[3 * e + 1]].push(e);
    maxW = Math.max(maxW, Math.abs(edges[3 * e + 2]));
  }
  const loadOf = new Map<number, number[]>();
  for (let r = 0; r < loads.length / 4; r++) {
    const e = loads[4 * r];
    const list = loadOf.get(e);
    if (list) list.push(r);
    else loadOf.set(e, [r]);
  }

  const root = el("div", "cb-root cb-graph", host);
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Attribution graph";
  el("div", "cb-caption cb-graph-desc", root).textContent = model.get("description");
  const body = el("div", "cb-body", root);
  const figure = el("div", "cb-figure cb-graph-figure", body);
  figure.style.width = `${lay.width}px`;
  figure.style.position = "relative";
  const canvas = el("canvas", "cb-graph-canvas", figure);
  canvas.style.width = `${lay.width}px`;
  canvas.style.height = `${lay.height}px`;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `attribution graph: ${N} nodes, ${M} edges`);
  // Node centres in CSS pixels of the canvas, for tests and tools that point at nodes.
  (canvas as HTMLCanvasElement & { cbNodeXY?: (i: number) => [number, number] }).cbNodeXY = (i: number) => [lay.x[i], lay.y[i]];
  const axis = el("div", "cb-graph-tokens", figure);
  axis.style.marginLeft = `${lay.axis}px`;
  axis.style.display = "flex";
  tokens.forEach((t) => {
    const s = el("span", "cb-token cb-graph-token", axis);
    s.style.width = `${lay.col}px`;
    s.style.display = "inline-block";
    s.style.overflow = "hidden";
    s.style.textAlign = "center";
    s.style.whiteSpace = "nowrap";
    s.style.textOverflow = "ellipsis";
    s.title = t;
    s.textContent = visible(t); // token text is text, never HTML
  });
  const tip = el("div", "cb-tip cb-graph-tip", root);
  tip.hidden = true;
  const side = el("div", "cb-side cb-graph-side", body);
  const info = el("div", "cb-graph-info", side);
  el("div", "cb-caption", side).textContent = "supernodes (shift-click pins, then group)";
  const groupRow = el("div", "cb-graph-group", side);
  const nameIn = el("input", "cb-graph-name", groupRow);
  nameIn.placeholder = "supernode name";
  const groupBtn = el("button", "cb-figure-button cb-graph-groupbtn", groupRow);
  groupBtn.type = "button";
  groupBtn.textContent = "group pinned";
  const superList = el("div", "cb-graph-supers", side);
  const results = el("div", "cb-graph-results", side);
  // a head loading's click: cb.explain_attention of that head at (target position, source position)
  const explainPanel = model.get("explainable")
    ? new ExplainPanel(fetcher, {
        tokens,
        target: "",
        select: (v) => select(link, v),
        signal,
        ovNote: "The head's score where the edge's target (query) reads the source's position (key); the button's number is the head's part of the edge.",
      })
    : null;
  if (explainPanel) side.insertBefore(explainPanel.el, info.nextSibling);
  const note = el("div", "cb-caption cb-graph-note", side);
  if (offline) note.textContent = "saved report: interventions already run are shown; new ones need a running kernel";

  let hovered: number | null = null;
  let clicked: number | null = null;
  const css = (name: string, fallback: string) => getComputedStyle(root).getPropertyValue(name).trim() || fallback;

  const draw = () => {
    const t0 = performance.now();
    const dpr = Math.max(1, Math.min(3, Math.round(window.devicePixelRatio || 1)));
    canvas.width = lay.width * dpr;
    canvas.height = lay.height * dpr;
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const fg = css("--cb-fg", "#111");
    const muted = css("--cb-muted", "#666");
    const panel = css("--cb-panel", "#f6f8fa");
    ctx.clearRect(0, 0, lay.width, lay.height);
    ctx.font = "10px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let r = 0; r < L + 2; r++) {
      const y = 4 + r * lay.row;
      if (r % 2 === 1) {
        ctx.fillStyle = panel;
        ctx.fillRect(0, y, lay.width, lay.row);
      }
      ctx.fillStyle = muted;
      const layer = L - r;
      const text = layer === L ? "logits" : layer === -1 ? "tokens" : `L${layer}`;
      if (L <= 32 || layer % 2 === 0 || layer === L || layer === -1) ctx.fillText(text, lay.axis - 6, y + lay.row / 2);
    }
    // every kept edge, faint; two paths (positive, negative) so 10k edges stay one stroke each
    const focus = hovered ?? clicked;
    for (const sign of [1, -1]) {
      ctx.beginPath();
      for (let e = 0; e < M; e++) {
        const w = edges[3 * e + 2];
        if ((w >= 0 ? 1 : -1) !== sign) continue;
        const s = edges[3 * e];
        const d = edges[3 * e + 1];
        ctx.moveTo(lay.x[s], lay.y[s]);
        ctx.lineTo(lay.x[d], lay.y[d]);
      }
      ctx.strokeStyle = sign > 0 ? "rgba(33,102,172,0.12)" : "rgba(178,24,43,0.12)";
      ctx.lineWidth = 0.6;
      ctx.stroke();
    }
    if (focus !== null) {
      for (const e of [...inE[focus], ...outE[focus]]) {
        const w = edges[3 * e + 2];
        const s = edges[3 * e];
        const d = edges[3 * e + 1];
        ctx.beginPath();
        ctx.moveTo(lay.x[s], lay.y[s]);
        ctx.lineTo(lay.x[d], lay.y[d]);
        ctx.strokeStyle = w >= 0 ? "rgba(33,102,172,0.9)" : "rgba(178,24,43,0.9)";
        ctx.lineWidth = 0.8 + 4 * Math.sqrt(Math.abs(w) / (maxW || 1));
        ctx.stroke();
      }
    }
    const pinned = new Set(model.get("pinned") ?? []);
    for (let i = 0; i < N; i++) {
      const kind = nodes[6 * i];
      const act = nodes[6 * i + 4];
      const x = lay.x[i];
      const y = lay.y[i];
      ctx.beginPath();
      if (kind === KIND.token) ctx.rect(x - 5, y - 5, 10, 10);
      else if (kind === KIND.logit) ctx.rect(x - 9, y - 4, 18, 8);
      else if (kind === KIND.error) {
        ctx.moveTo(x, y - 6);
        ctx.lineTo(x + 6, y);
        ctx.lineTo(x, y + 6);
        ctx.lineTo(x - 6, y);
        ctx.closePath();
      } else ctx.arc(x, y, 4.5, 0, 2 * Math.PI);
      ctx.fillStyle =
        kind === KIND.token ? muted : kind === KIND.logit ? "#e08214" : kind === KIND.error ? "#999" : act >= 0 ? "#2166ac" : "#b2182b";
      ctx.fill();
      if (pinned.has(i) || i === focus) {
        ctx.lineWidth = 2;
        ctx.strokeStyle = i === focus ? fg : "#e08214";
        ctx.stroke();
      }
    }
    ctx.getImageData(0, 0, 1, 1); // wait for the raster, so paintMs is the real paint time
    root.dataset.paintMs = String(performance.now() - t0);
    root.dataset.edges = String(M);
  };

  const nodeAt = (px: number, py: number): number | null => {
    let best: number | null = null;
    let bd = 64;
    for (let i = 0; i < N; i++) {
      const d = (lay.x[i] - px) ** 2 + (lay.y[i] - py) ** 2;
      if (d < bd) {
        bd = d;
        best = i;
      }
    }
    return best;
  };

  const showInfo = (i: number | null) => {
    info.replaceChildren();
    if (i === null) {
      info.textContent = "hover a node for its edges; click selects it in linked views";
      return;
    }
    el("div", "cb-graph-label", info).textContent = `${label(i)} · activation ${fmt(nodes[6 * i + 4])} · influence ${fmt(nodes[6 * i + 5])}`;
    el("div", "cb-caption", info).textContent = "strongest inputs";
    const list = el("ol", "cb-graph-inputs", info);
    const ins = [...inE[i]].sort((a, b) => Math.abs(edges[3 * b + 2]) - Math.abs(edges[3 * a + 2])).slice(0, 8);
    for (const e of ins) {
      const li = el("li", "cb-graph-input", list);
      li.textContent = `${label(edges[3 * e])}  ${fmt(edges[3 * e + 2])}`;
      const parts = (loadOf.get(e) ?? []).sort((a, b) => Math.abs(loads[4 * b + 3]) - Math.abs(loads[4 * a + 3])).slice(0, 3);
      for (const r of parts) {
        const b = el("button", "cb-figure-button cb-graph-head", li);
        b.type = "button";
        b.textContent = `L${loads[4 * r + 1]}H${loads[4 * r + 2]} ${fmt(loads[4 * r + 3])}`;
        const layer = loads[4 * r + 1];
        const head = loads[4 * r + 2];
        const query = nodes[6 * i + 2]; // the head's last hop lands on the target's position
        const key = nodes[6 * edges[3 * e] + 2];
        b.title = explainPanel
          ? `the part of this edge through this head; click to explain its score at query ${query}, key ${key} (cb.explain_attention) and select it in linked views`
          : "the part of this edge through this head; click to select the head in linked views";
        b.addEventListener(
          "click",
          () => {
            select(link, { layer, head, token: query });
            if (explainPanel) void explainPanel.explain(layer, head, query, key);
          },
          { signal },
        );
      }
    }
  };

  canvas.addEventListener(
    "pointermove",
    (ev) => {
      const r = canvas.getBoundingClientRect();
      const i = nodeAt(ev.clientX - r.left, ev.clientY - r.top);
      if (i !== hovered) {
        hovered = i;
        root.dataset.hover = i === null ? "" : label(i);
        draw();
        showInfo(i ?? clicked);
      }
      if (i === null) tip.hidden = true;
      else {
        tip.hidden = false;
        tip.textContent = `${label(i)} · act ${fmt(nodes[6 * i + 4])} · ${inE[i].length} in / ${outE[i].length} out`;
        tip.style.left = `${ev.clientX - r.left + 12}px`;
        tip.style.top = `${ev.clientY - r.top + 12}px`;
      }
    },
    { signal },
  );
  canvas.addEventListener(
    "pointerleave",
    () => {
      hovered = null;
      tip.hidden = true;
      draw();
      showInfo(clicked);
    },
    { signal },
  );
  canvas.addEventListener(
    "click",
    (ev) => {
      const r = canvas.getBoundingClientRect();
      const i = nodeAt(ev.clientX - r.left, ev.clientY - r.top);
      if (i === null) return;
      if (ev.shiftKey) {
        const set = new Set(model.get("pinned") ?? []);
        if (set.has(i)) set.delete(i);
        else set.add(i);
        model.set("pinned", [...set].sort((a, b) => a - b));
        model.save_changes();
      } else {
        clicked = i;
        const kind = nodes[6 * i];
        const layer = nodes[6 * i + 1];
        const values: Record<string, number | null> = { token: nodes[6 * i + 2] };
        if (kind === KIND.basis || kind === KIND.error) values.layer = layer;
        if (kind === KIND.basis && model.get("basis") === "neurons") values.neuron = nodes[6 * i + 3];
        select(link, values);
      }
      root.dataset.clicked = String(i);
      draw();
      showInfo(i);
    },
    { signal },
  );

  const showSupers = () => {
    superList.replaceChildren();
    for (const [name, members] of Object.entries(model.get("supernodes") ?? {})) {
      const row = el("div", "cb-graph-super", superList);
      el("span", "cb-graph-supername", row).textContent = `${name} (${members.length})`;
      const factor = el("input", "cb-graph-factor", row);
      factor.type = "number";
      factor.step = "0.5";
      factor.value = "0";
      factor.title = "multiply the supernode's activations by this (0 ablates)";
      factor.style.width = "4em";
      const run = el("button", "cb-figure-button cb-graph-run", row);
      run.type = "button";
      run.textContent = "run";
      run.addEventListener(
        "click",
        async () => {
          if (offline || !model.get("live")) {
            note.textContent = offline
              ? "this is a saved report: new interventions need a running kernel"
              : "no model attached: build the view with cb.graph_view(graph, model=..., tokenizer=...)";
            return;
          }
          root.dataset.running = "true";
          try {
            await fetcher.get({ kind: "intervene", name, nodes: members, factor: Number(factor.value) });
          } catch (err) {
            note.textContent = String((err as Error).message ?? err);
          } finally {
            delete root.dataset.running;
          }
        },
        { signal },
      );
    }
  };
  const showResults = () => {
    results.replaceChildren();
    const runs = model.get("interventions") ?? [];
    for (const r of runs) {
      const row = el("div", "cb-graph-result", results);
      const d = (r.metric_after ?? 0) - (r.metric_before ?? 0);
      el("div", "", row).textContent = `${r.name} × ${r.factor}: ${r.metric} ${fmt(r.metric_before)} → ${fmt(r.metric_after)} (Δ ${fmt(d)})`;
      el("div", "cb-caption", row).textContent = `top: ${(r.top ?? []).map(([t, p]) => `${JSON.stringify(visible(t))} ${(100 * p).toFixed(1)}%`).join(", ")}`;
    }
    root.dataset.interventions = String(runs.length);
  };
  groupBtn.addEventListener(
    "click",
    () => {
      const name = nameIn.value.trim();
      const pinned = model.get("pinned") ?? [];
      if (!name || !pinned.length) {
        note.textContent = "pin nodes (shift-click) and type a name first";
        return;
      }
      model.set("supernodes", { ...(model.get("supernodes") ?? {}), [name]: [...pinned] });
      model.set("pinned", []);
      model.save_changes();
    },
    { signal },
  );

  const redraw = () => draw();
  model.on("change:pinned", redraw);
  model.on("change:supernodes", showSupers);
  model.on("change:interventions", showResults);
  const offTheme = followTheme(model as AnyModel, root, redraw);
  draw();
  showInfo(null);
  showSupers();
  showResults();
  return () => {
    abort.abort();
    offTheme();
    model.off("change:pinned", redraw);
    model.off("change:supernodes", showSupers);
    model.off("change:interventions", showResults);
  };
}
