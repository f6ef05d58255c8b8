// Explanation panel of the attention view: why one cell (query, key) of one head has its score.
// The kernel computes the exact split (cb.explain_attention) on demand; the panel shows the
// top query × key component pairs as a small heatmap (values on hover), the pairs as a list,
// and, with an attribution target, what the head moves into that logit from each source
// position (cb.explain_head_output). Clicking a component (L5H2, L5.mlp) selects it in
// linked views. Every label is inserted as text.
import { cssColor, type Lut, textOn } from "../colormaps";
import { el } from "../dom";
import type { Fetcher } from "../fetch";
import { isDark } from "../theme";
import { divergingFor, fmt, symmetricMax } from "./attribution";

interface Pair {
  label: string;
  query: string;
  key: string;
  value: number;
}

interface Source {
  pos: number;
  value: number;
  weight: number;
}

export interface Explanation {
  layer: number;
  head: number;
  kv_head: number;
  query: number;
  key: number;
  score: number;
  total: number;
  score_source: string;
  softcap: number | null;
  q_labels: string[];
  k_labels: string[];
  q_totals: number[];
  k_totals: number[];
  matrix: number[]; // [q_labels × k_labels], row-major
  shown: number;
  n_query: number;
  n_key: number;
  pairs: Pair[];
  ov: null | {
    target: string;
    baseline: string | null;
    query: number;
    model_value: number;
    total: number;
    sources: Source[];
    rest: number;
  };
}

export interface PanelOptions {
  tokens: string[];
  target: string; // "" without an attribution target
  /** Select a component in the linked views: {layer, head} for a head, {layer} for an MLP. */
  select(values: { layer: number; head?: number }): void;
  signal: AbortSignal;
  /** The note shown where the OV side would be, when the reply has none. */
  ovNote?: string;
  /** Called when the panel is closed (the view unmarks the explained cell). */
  onClose?(): void;
}

/** Explanations fetched ahead of clicks are kept up to this many bytes (their JSON length). */
export const AHEAD_BYTES = 2 * 2 ** 20;
/** Cells fetched ahead for one head, at most (the kernel computes each: ~0.1 s under load). */
export const AHEAD_CELLS = 256;
/** Keys per fetch-explain-row message: a click on a cell not fetched yet waits behind one. */
export const AHEAD_ROW_KEYS = 8;

/** One query row of cells to fetch ahead. */
export interface AheadRow {
  query: number;
  keys: number[];
}

/**
 * The cells of a head a click most likely lands on, at most `maxCells`: every cell when the
 * head has that few, else each query's most-attended keys (`weight(q, k)`). Rows come in the
 * order they are fetched: the locked query first, then from the last query up (the prompt's
 * end, where predictions are read).
 */
export function aheadCells(n: number, weight: (q: number, k: number) => number, locked: number | null, maxCells = AHEAD_CELLS): AheadRow[] {
  const total = (n * (n + 1)) / 2;
  const perRow = total <= maxCells ? n : Math.max(1, Math.floor(maxCells / n));
  const order: number[] = [];
  if (locked !== null && locked >= 0 && locked < n) order.push(locked);
  for (let q = n - 1; q >= 0; q--) if (q !== locked) order.push(q);
  const rows: AheadRow[] = [];
  let cells = 0;
  for (const q of order) {
    let keys = Array.from({ length: q + 1 }, (_, k) => k);
    if (keys.length > perRow) keys = keys.sort((a, b) => weight(q, b) - weight(q, a) || a - b).slice(0, perRow);
    keys = keys.slice(0, maxCells - cells);
    if (!keys.length) break;
    rows.push({ query: q, keys });
    cells += keys.length;
  }
  return rows;
}

/** Where a component lives in the model, or null for embeddings and biases. */
export function componentTarget(label: string): { layer: number; head?: number } | null {
  const h = /^L(\d+)H(\d+)$/.exec(label);
  if (h) return { layer: Number(h[1]), head: Number(h[2]) };
  const m = /^L(\d+)\.mlp$/.exec(label);
  if (m) return { layer: Number(m[1]) };
  return null;
}

/** A token as a quoted string, long ones cut (the tooltip and the strip show them whole). */
const show = (tok: string, max = 32) => JSON.stringify(tok.length > max ? `${tok.slice(0, max)}…` : tok);

/** Text inside a small heatmap cell: two significant digits, nothing when it would not fit. */
function cellText(v: number, vmax: number): string {
  if (!(Math.abs(v) >= 0.1 * vmax)) return "";
  const s = Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(2);
  return s.includes("e") || s.length > 5 ? "" : s.replace("-", "−");
}

export class ExplainPanel {
  readonly el: HTMLDivElement;
  private title: HTMLDivElement;
  private summary: HTMLDivElement;
  private grid: HTMLDivElement;
  private tip: HTMLDivElement;
  private pairs: HTMLOListElement;
  private ov: HTMLDivElement;
  private current: Explanation | null = null;
  private wanted = "";
  /** Explanations fetched ahead (live), oldest first, within AHEAD_BYTES. */
  private ahead = new Map<string, { x: Explanation; bytes: number }>();
  private aheadBytes = 0;
  private aheadRun = 0;

  constructor(private fetcher: Fetcher, private opts: PanelOptions) {
    this.el = el("div", "cb-xp");
    this.el.hidden = true;
    this.el.setAttribute("role", "region");
    this.el.setAttribute("aria-label", "why this attention score");
    const head = el("div", "cb-xp-head", this.el);
    this.title = el("div", "cb-xp-title", head);
    const close = el("button", "cb-button cb-xp-close", head);
    close.type = "button";
    close.textContent = "×";
    close.title = "close the explanation (Escape)";
    close.setAttribute("aria-label", "close the explanation");
    close.addEventListener("click", () => this.close(), { signal: opts.signal });
    this.summary = el("div", "cb-xp-summary", this.el);
    this.grid = el("div", "cb-xp-grid", this.el);
    this.tip = el("div", "cb-xp-tip", this.el);
    this.tip.textContent = "Blue raises the score, red lowers it. Hover a cell for its value; click a component to select it in linked views.";
    el("div", "cb-xp-sub", this.el).textContent = "Top query × key pairs";
    this.pairs = el("ol", "cb-xp-pairs", this.el);
    this.ov = el("div", "cb-xp-ov", this.el);
    this.el.addEventListener(
      "click",
      (ev) => {
        const b = (ev.target as HTMLElement).closest?.(".cb-xp-comp") as HTMLElement | null;
        const where = b ? componentTarget(b.dataset.label ?? "") : null;
        if (where) {
          this.el.dataset.selected = b?.dataset.label ?? "";
          opts.select(where);
        }
      },
      { signal: opts.signal },
    );
    const root = () => this.el.closest(".cb-root") as HTMLElement | null;
    const watch = new MutationObserver(() => this.current && this.paint(this.current));
    queueMicrotask(() => {
      const r = root();
      if (r) watch.observe(r, { attributes: true, attributeFilter: ["data-cb-theme"] });
    });
    opts.signal.addEventListener("abort", () => watch.disconnect());
  }

  get isOpen(): boolean {
    return !this.el.hidden;
  }

  /** Whether the explanation of this cell is at hand (fetched ahead), so a click draws at once. */
  has(layer: number, head: number, query: number, key: number): boolean {
    return this.ahead.has(`${layer}:${head}:${query}:${key}`);
  }

  private keep(x: Explanation): void {
    const id = `${x.layer}:${x.head}:${x.query}:${x.key}`;
    if (this.ahead.has(id)) return;
    const bytes = 2 * JSON.stringify(x).length; // UTF-16
    this.ahead.set(id, { x, bytes });
    this.aheadBytes += bytes;
    for (const [k, old] of this.ahead) {
      if (this.aheadBytes <= AHEAD_BYTES) break;
      this.ahead.delete(k);
      this.aheadBytes -= old.bytes;
    }
  }

  /**
   * Live: fetch the explanations of `rows` of one head ahead of clicks, a few keys per message
   * (so a click on another cell waits behind one), in order. A later call stops an earlier
   * one; so does the budget (what this head fetched never pushes out its own cells). Resolves
   * to the cells kept, or -1 when stopped.
   */
  async prefetch(layer: number, head: number, rows: AheadRow[]): Promise<number> {
    const run = ++this.aheadRun;
    let used = 0;
    let kept = 0;
    for (const row of rows) {
      const keys = row.keys.filter((k) => !this.has(layer, head, row.query, k));
      for (let i = 0; i < keys.length; i += AHEAD_ROW_KEYS) {
        if (run !== this.aheadRun || this.opts.signal.aborted) return -1;
        const chunk = keys.slice(i, i + AHEAD_ROW_KEYS);
        let cells: Explanation[];
        try {
          const { reply } = await this.fetcher.request({ kind: "fetch-explain-row", layer, head, query: row.query, keys: chunk });
          cells = (reply as unknown as { cells: Explanation[] }).cells;
        } catch {
          return kept; // e.g. a capture that cannot explain: a click says why
        }
        if (run !== this.aheadRun) return -1;
        for (const x of cells) {
          used += 2 * JSON.stringify(x).length;
          if (used > AHEAD_BYTES) return kept;
          this.keep(x);
          kept += 1;
        }
      }
    }
    return kept;
  }

  close(): void {
    this.el.hidden = true;
    this.wanted = "";
    this.el.dataset.state = "closed";
    this.opts.onClose?.();
  }

  /** Ask the kernel (or the report) for the explanation of one cell and show it. */
  async explain(layer: number, head: number, query: number, key: number): Promise<void> {
    const t0 = performance.now();
    const id = `${layer}:${head}:${query}:${key}`;
    this.wanted = id;
    this.el.hidden = false;
    this.el.dataset.state = "loading";
    this.title.textContent = `L${layer}H${head} · query #${query} → key #${key}`;
    this.summary.textContent = "explaining…";
    const hit = this.ahead.get(id);
    if (hit) {
      // fetched ahead: drawn in this click's task, no kernel round trip
      this.ahead.delete(id); // most recently used last
      this.ahead.set(id, hit);
      this.current = hit.x;
      this.paint(hit.x);
      this.el.dataset.state = "ready";
      this.el.dataset.ms = (performance.now() - t0).toFixed(1);
      this.el.dataset.cached = "true";
      this.el.dataset.count = String(Number(this.el.dataset.count ?? 0) + 1);
      return;
    }
    this.el.dataset.cached = "false";
    try {
      const { reply } = await this.fetcher.get({ kind: "fetch-explain", layer, head, query, key });
      if (this.wanted !== id) return; // a newer click won
      this.current = reply as unknown as Explanation;
      this.paint(this.current);
      this.el.dataset.state = "ready";
      this.el.dataset.ms = (performance.now() - t0).toFixed(1);
      this.el.dataset.count = String(Number(this.el.dataset.count ?? 0) + 1); // explanations shown
    } catch (err) {
      if (this.wanted !== id) return;
      this.current = null;
      let msg = String((err as Error).message ?? err).replace(/^\[circuitboard\] /, "");
      if (/not included in the report/.test(msg)) {
        msg = "This cell's explanation is not in this report (it embeds each query's most-attended key of the selected head); open the notebook to explain any cell.";
      }
      this.grid.replaceChildren();
      this.pairs.replaceChildren();
      this.ov.replaceChildren();
      this.summary.textContent = msg;
      this.el.dataset.state = "error";
    }
  }

  private comp(label: string, parent: HTMLElement, cls = ""): HTMLElement {
    const where = componentTarget(label);
    const b = el(where ? "button" : "span", `cb-xp-comp ${cls}`, parent);
    if (b instanceof HTMLButtonElement) b.type = "button";
    b.dataset.label = label;
    b.textContent = label;
    b.title = where ? `select ${label} in linked views` : label;
    return b;
  }

  private paint(x: Explanation): void {
    const tokens = this.opts.tokens;
    const dark = isDark(this.el);
    const lut: Lut = divergingFor(dark);
    this.title.textContent = `L${x.layer}H${x.head} · query #${x.query} ${show(tokens[x.query] ?? "")} → key #${x.key} ${show(tokens[x.key] ?? "")}`;
    const capped = x.softcap ? ` (before the soft-cap at ${x.softcap})` : "";
    this.summary.textContent =
      `score ${fmt(x.score)}${capped} = Σ of ${x.n_query} × ${x.n_key} query × key component terms ` +
      `(sum ${fmt(x.total)}); the ${x.q_labels.length} × ${x.k_labels.length} shown add up to ${fmt(x.shown)}. ` +
      `Key/value head ${x.kv_head}.`;
    this.summary.title = `score from ${x.score_source}`;

    // small heatmap: rows = query components, columns = key components, plus Σ row / column
    const nq = x.q_labels.length;
    const nk = x.k_labels.length;
    const vmax = symmetricMax(x.matrix);
    this.grid.replaceChildren();
    this.grid.style.gridTemplateColumns = `auto repeat(${nk}, 30px) 40px`;
    const corner = el("div", "cb-xp-corner", this.grid);
    corner.textContent = "q \\ k";
    corner.title = "rows: query-side components; columns: key-side components";
    for (const lab of x.k_labels) this.comp(lab, el("div", "cb-xp-colhead", this.grid));
    el("div", "cb-xp-colhead cb-xp-sum", this.grid).textContent = "Σ row";
    const cell = (parent: HTMLElement, v: number, title: string, cls = "cb-xp-cell") => {
      const c = el("div", cls, parent);
      const t = 0.5 + 0.5 * Math.max(-1, Math.min(1, v / vmax));
      c.style.background = cssColor(lut, t);
      c.style.color = textOn(lut, t);
      c.textContent = cellText(v, vmax);
      c.dataset.value = String(v);
      c.dataset.tip = title;
      return c;
    };
    for (let i = 0; i < nq; i++) {
      this.comp(x.q_labels[i], el("div", "cb-xp-rowhead", this.grid));
      for (let j = 0; j < nk; j++) {
        const c = cell(this.grid, x.matrix[i * nk + j], `query ${x.q_labels[i]} × key ${x.k_labels[j]}: ${fmt(x.matrix[i * nk + j])}`);
        c.dataset.row = String(i);
        c.dataset.col = String(j);
      }
      cell(this.grid, x.q_totals[i], `query ${x.q_labels[i]} against the whole key: ${fmt(x.q_totals[i])}`, "cb-xp-cell cb-xp-sum");
    }
    el("div", "cb-xp-rowhead cb-xp-sum", this.grid).textContent = "Σ col";
    for (let j = 0; j < nk; j++) cell(this.grid, x.k_totals[j], `key ${x.k_labels[j]} against the whole query: ${fmt(x.k_totals[j])}`, "cb-xp-cell cb-xp-sum");
    el("div", "cb-xp-cell cb-xp-sum", this.grid);
    const onHover = (ev: Event) => {
      const c = (ev.target as HTMLElement).closest?.(".cb-xp-cell") as HTMLElement | null;
      if (c?.dataset.tip) this.tip.textContent = c.dataset.tip;
    };
    this.grid.onpointerover = onHover;
    this.grid.onfocus = onHover;

    // the pairs as a list (exact values)
    this.pairs.replaceChildren();
    const pmax = Math.max(1e-12, ...x.pairs.map((p) => Math.abs(p.value)));
    for (const p of x.pairs) {
      const li = el("li", "cb-xp-pair", this.pairs);
      this.comp(p.query, li);
      li.append(" × ");
      this.comp(p.key, li);
      const bar = el("span", "cb-xp-bar", li);
      bar.style.width = `${Math.round((48 * Math.abs(p.value)) / pmax)}px`;
      bar.style.background = cssColor(lut, p.value >= 0 ? 0.85 : 0.15);
      el("span", "cb-xp-num", li).textContent = fmt(p.value);
    }

    // the OV side: what the head moves from each source into the attribution target
    this.ov.replaceChildren();
    if (!x.ov) {
      el("div", "cb-xp-note", this.ov).textContent =
        this.opts.ovNote ?? "What this head moves into a logit, by source position: pass target= (and baseline=) to cb.attention.";
      return;
    }
    const ov = x.ov;
    const what = ov.baseline !== null ? `${show(ov.target)} − ${show(ov.baseline)}` : show(ov.target);
    el("div", "cb-xp-sub", this.ov).textContent = `What L${x.layer}H${x.head} moves into logit ${what} at #${ov.query}`;
    el("div", "cb-xp-note", this.ov).textContent =
      `head term ${fmt(ov.model_value)} = Σ over sources of weight × value · W_O · unembedding (sum ${fmt(ov.total)}; ${fmt(ov.rest)} outside the sources shown)`;
    const list = el("ol", "cb-xp-sources", this.ov);
    const smax = Math.max(1e-12, ...ov.sources.map((s) => Math.abs(s.value)));
    for (const s of ov.sources) {
      const li = el("li", "cb-xp-source", list);
      li.dataset.pos = String(s.pos);
      if (s.pos === x.key) li.classList.add("cb-xp-key");
      const tok = el("span", "cb-xp-tok", li);
      tok.textContent = `#${s.pos} ${show(tokens[s.pos] ?? "")}`;
      const bar = el("span", "cb-xp-bar", li);
      bar.style.width = `${Math.round((90 * Math.abs(s.value)) / smax)}px`;
      bar.style.background = cssColor(lut, s.value >= 0 ? 0.85 : 0.15);
      el("span", "cb-xp-num", li).textContent = fmt(s.value);
      li.title = `#${s.pos} ${JSON.stringify(tokens[s.pos] ?? "")}: attention weight ${s.weight.toFixed(3)}, contribution ${fmt(s.value)}`;
    }
  }
}
