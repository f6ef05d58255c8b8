// Generation view: the generated tokens as a timeline (forks as parallel rows, differing tokens
// highlighted, a per-step KL strip), a scrubber, and for the selected step the top-k next-token
// distribution, the logit lens, the chosen head's attention from that step's query and the
// direct logit attribution of the chosen token. A step selects its query position as the
// shared token; the head follows the link's layer / head.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { cssColor, sequential, textOn } from "../colormaps";
import { el } from "../dom";
import { Fetcher, prefetchAllowed } from "../fetch";
import { hover, onSelection, resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import type { Encoded } from "../types";
import { visible } from "./lens";

interface Row {
  label: string;
  title: string;
  tokens: string[];
  fork_step: number | null;
  forced: number[];
  n_steps: number;
  steered: boolean;
  diff: boolean[];
  _top_index: Encoded;
  _top_prob: Encoded;
  _chosen_prob: Encoded;
  _kl: Encoded | null;
}

interface GenState {
  prompt_tokens: string[];
  n_prompt: number;
  n_layers: number;
  n_heads: number;
  k: number;
  step: number;
  row: number;
  has_pattern: boolean;
  _rows: Row[];
  _strings: string[];
  theme: string;
  link: string;
}

interface Decoded {
  row: Row;
  topIndex: Float32Array; // [S, k]
  topProb: Float32Array;
  chosenProb: Float32Array; // [S]
  kl: Float32Array | null; // [min(S, S_base)]
}

/** One step's internals, as the kernel (or the report) sends them. */
interface StepData {
  query: number;
  lensTokens: string[] | null;
  lensProb: Float32Array | null; // [L]
  lensChosen: Float32Array | null;
  lensError: string;
  attention: { n: number; data: Float32Array } | null; // [L, H, n]
  dlaLabels: string[];
  dla: Float32Array | null; // [C]
  dlaModel: number;
  dlaError: string;
}

const DLA_SHOWN = 10;
/** Live: steps fetched ahead of the scrubber are kept up to this many bytes (about). */
export const AHEAD_BYTES = 16 * 2 ** 20;
const HEAD_RE = /^L(\d+)H(\d+)$/;

function decodeRow(row: Row): Decoded {
  return {
    row,
    topIndex: decode(row._top_index).data,
    topProb: decode(row._top_prob).data,
    chosenProb: decode(row._chosen_prob).data,
    kl: row._kl ? decode(row._kl).data : null,
  };
}

function stepData(reply: Record<string, unknown>, buffers: DataView[]): StepData {
  const enc = (k: string) => (reply[k] ? decode(reply[k] as Encoded, buffers) : null);
  const att = enc("attention");
  return {
    query: reply.query as number,
    lensTokens: (reply.lens_tokens as string[] | undefined) ?? null,
    lensProb: enc("lens_prob")?.data ?? null,
    lensChosen: enc("lens_chosen")?.data ?? null,
    lensError: (reply.lens_error as string | undefined) ?? "",
    attention: att ? { n: att.shape[2], data: att.data } : null,
    dlaLabels: (reply.dla_labels as string[] | undefined) ?? [],
    dla: enc("dla")?.data ?? null,
    dlaModel: (reply.dla_model as number | undefined) ?? Number.NaN,
    dlaError: (reply.dla_error as string | undefined) ?? "",
  };
}

/** KL (nats) → [0, 1] colour position: 1 − e^−kl, so 0 stays white and large values saturate. */
export function klShade(kl: number): number {
  return Number.isFinite(kl) ? 1 - Math.exp(-Math.max(0, kl)) : 0;
}

/** Indices of the `n` largest |values|, largest first. */
export function topAbs(values: ArrayLike<number>, n: number): number[] {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  idx.sort((a, b) => Math.abs(values[b]) - Math.abs(values[a]));
  return idx.slice(0, n);
}

function bar(parent: HTMLElement, frac: number, cls: string): void {
  const track = el("span", "cb-gen-track", parent);
  const fill = el("span", `cb-gen-fill ${cls}`, track);
  fill.style.width = `${Math.max(0, Math.min(1, frac)) * 100}%`;
}

export async function render(props: RenderProps<GenState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const nPrompt = model.get("n_prompt");
  const L = model.get("n_layers");
  const H = model.get("n_heads");
  const promptTokens = model.get("prompt_tokens");
  let rows: Decoded[] = model.get("_rows").map(decodeRow);
  let strings = model.get("_strings");
  let step = 0;
  let rowIdx = 0;

  const root = el("div", "cb-root cb-gen", host);
  root.tabIndex = 0;
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Generation";
  const scrub = el("input", "cb-gen-scrub", header);
  scrub.type = "range";
  scrub.min = "0";
  scrub.setAttribute("aria-label", "step");
  const stepLabel = el("span", "cb-gen-steplabel", header);
  const status = el("span", "cb-status", header);

  const promptLine = el("div", "cb-gen-prompt", root);
  el("span", "cb-gen-prompt-label", promptLine).textContent = "prompt ";
  el("span", "cb-gen-prompt-text", promptLine).textContent = visible(promptTokens.join(""));

  const timeline = el("div", "cb-gen-timeline", root);
  const detail = el("div", "cb-gen-detail", root);
  const topBox = el("div", "cb-gen-panel cb-gen-top", detail);
  const lensBox = el("div", "cb-gen-panel cb-gen-lens", detail);
  const attnBox = el("div", "cb-gen-panel cb-gen-attn", detail);
  const dlaBox = el("div", "cb-gen-panel cb-gen-dla", detail);

  const current = () => rows[Math.min(rowIdx, rows.length - 1)];
  const nSteps = () => current().row.n_steps;
  const str = (i: number) => strings[i] ?? "";
  const chosenText = (d: Decoded, s: number) => d.row.tokens[s] ?? "";

  // -- timeline ----------------------------------------------------------------------------
  let cells: HTMLElement[][] = [];
  const buildTimeline = () => {
    timeline.replaceChildren();
    cells = [];
    const dark = isDark(root);
    const lut = sequential(dark);
    const maxSteps = Math.max(...rows.map((r) => r.row.n_steps));
    const grid = el("div", "cb-gen-grid", timeline);
    grid.style.gridTemplateColumns = `minmax(120px, 220px) repeat(${maxSteps}, 64px)`;
    el("div", "cb-gen-corner", grid).textContent = "step";
    for (let s = 0; s < maxSteps; s++) {
      const h = el("div", "cb-gen-stepnum", grid);
      h.textContent = String(s);
      h.dataset.step = String(s);
    }
    rows.forEach((d, r) => {
      const label = el("div", "cb-gen-label", grid);
      label.textContent = d.row.label;
      label.title = d.row.title;
      label.dataset.row = String(r);
      const mine: HTMLElement[] = [];
      for (let s = 0; s < maxSteps; s++) {
        const c = el("div", "cb-gen-tok", grid);
        c.dataset.row = String(r);
        c.dataset.step = String(s);
        if (s < d.row.n_steps) {
          c.textContent = visible(d.row.tokens[s]);
          c.title = `step ${s}: ${JSON.stringify(d.row.tokens[s])} p=${d.chosenProb[s].toFixed(3)}`;
          if (d.row.diff[s]) c.classList.add("cb-gen-diff");
          if (d.row.forced.includes(s)) c.classList.add("cb-gen-forced");
          if (d.row.fork_step !== null && s < d.row.fork_step) c.classList.add("cb-gen-shared");
        } else c.classList.add("cb-gen-empty");
        mine.push(c);
      }
      cells.push(mine);
      if (d.kl) {
        el("div", "cb-gen-kl-label", grid).textContent = "KL(base ‖ this)";
        for (let s = 0; s < maxSteps; s++) {
          const k = el("div", "cb-gen-kl", grid);
          k.dataset.row = String(r);
          k.dataset.step = String(s);
          if (s < d.kl.length) {
            const t = klShade(d.kl[s]);
            k.style.background = cssColor(lut, t);
            k.style.color = textOn(lut, t);
            k.textContent = d.kl[s] >= 0.005 ? d.kl[s].toFixed(2) : "";
            k.title = `step ${s}: KL = ${d.kl[s].toFixed(4)} nats`;
          }
        }
      }
    });
    status.textContent = `${rows.length} row${rows.length > 1 ? "s" : ""} · ${nPrompt} prompt tokens`;
    root.dataset.rows = String(rows.length);
  };

  // -- the selected step's panels ------------------------------------------------------------
  const drawTop = () => {
    const d = current();
    const k = model.get("k");
    topBox.replaceChildren();
    el("div", "cb-gen-h", topBox).textContent = `Next token at step ${step}`;
    const list = el("div", "cb-gen-list", topBox);
    const chosen = chosenText(d, step);
    let listed = false;
    for (let j = 0; j < k; j++) {
      const p = d.topProb[step * k + j];
      const text = str(d.topIndex[step * k + j]);
      const line = el("div", "cb-gen-line", list);
      const isChosen = text === chosen;
      listed ||= isChosen;
      if (isChosen) line.classList.add("cb-gen-chosen");
      el("span", "cb-gen-text", line).textContent = visible(text);
      bar(line, p, "cb-gen-prob");
      el("span", "cb-gen-num", line).textContent = p.toFixed(3);
    }
    if (!listed) {
      const line = el("div", "cb-gen-line cb-gen-chosen", list);
      el("span", "cb-gen-text", line).textContent = visible(chosen);
      bar(line, d.chosenProb[step], "cb-gen-prob");
      el("span", "cb-gen-num", line).textContent = d.chosenProb[step].toFixed(3);
    }
    const note = el("div", "cb-gen-note", topBox);
    note.textContent = d.row.forced.includes(step) ? "token forced (fork text)" : `chosen: ${JSON.stringify(chosen)}`;
  };

  const drawLens = (d: Decoded, sd: StepData) => {
    lensBox.replaceChildren();
    el("div", "cb-gen-h", lensBox).textContent = "Logit lens (top-1 per layer)";
    if (!sd.lensTokens || !sd.lensProb || !sd.lensChosen) {
      el("div", "cb-gen-note", lensBox).textContent = sd.lensError || "not available.";
      return;
    }
    const lut = sequential(isDark(root));
    const list = el("div", "cb-gen-lenslist", lensBox);
    for (let li = L - 1; li >= 0; li--) {
      const line = el("div", "cb-gen-lensrow", list);
      line.dataset.layer = String(li);
      el("span", "cb-gen-axis", line).textContent = String(li);
      const p = sd.lensProb[li];
      const text = sd.lensTokens[li] ?? "";
      const cell = el("span", "cb-gen-lenscell", line);
      cell.style.background = cssColor(lut, p);
      cell.style.color = textOn(lut, p);
      cell.textContent = visible(text);
      cell.title = `L${li}: ${JSON.stringify(text)} p=${p.toFixed(3)}`;
      const pc = sd.lensChosen[li];
      bar(line, pc, "cb-gen-prob");
      el("span", "cb-gen-num", line).textContent = pc.toFixed(2);
    }
    el("div", "cb-gen-note", lensBox).textContent = `cell: top-1 token and its probability; bar: P(${JSON.stringify(chosenText(d, step))})`;
  };

  const drawAttention = (d: Decoded, sd: StepData | null) => {
    const layer = Math.min(L - 1, Math.max(0, link.get("layer") ?? L - 1));
    const head = Math.min(H - 1, Math.max(0, link.get("head") ?? 0));
    const q = nPrompt + step - 1;
    attnBox.replaceChildren();
    const h = el("div", "cb-gen-h", attnBox);
    h.append("Attention of ");
    const layerSel = el("select", "cb-select", h);
    layerSel.setAttribute("aria-label", "layer");
    for (let i = 0; i < L; i++) layerSel.add(new Option(`L${i}`, String(i)));
    layerSel.value = String(layer);
    const headSel = el("select", "cb-select", h);
    headSel.setAttribute("aria-label", "head");
    for (let i = 0; i < H; i++) headSel.add(new Option(`H${i}`, String(i)));
    headSel.value = String(head);
    const onPick = () => select(link, { layer: Number(layerSel.value), head: Number(headSel.value) });
    layerSel.addEventListener("change", onPick, { signal });
    headSel.addEventListener("change", onPick, { signal });
    el("span", "cb-gen-muted", h).textContent = `from position ${q}`;
    attnBox.dataset.layer = String(layer);
    attnBox.dataset.head = String(head);
    attnBox.dataset.query = String(q);
    const strip = el("div", "cb-gen-keys", attnBox);
    if (!model.get("has_pattern")) {
      strip.textContent = "attention patterns were not captured (what= without 'pattern').";
      return;
    }
    if (!sd || !sd.attention) {
      strip.textContent = "…";
      return;
    }
    const n = sd.attention.n;
    const w = sd.attention.data.subarray((layer * H + head) * n, (layer * H + head + 1) * n);
    const toks = [...promptTokens, ...d.row.tokens];
    const lut = sequential(isDark(root));
    for (let j = 0; j < n; j++) {
      const s = el("span", "cb-token", strip);
      s.textContent = visible(toks[j] ?? "");
      s.style.background = cssColor(lut, w[j]);
      s.style.color = textOn(lut, w[j]);
      s.title = `#${j} ${JSON.stringify(toks[j] ?? "")}: ${w[j].toFixed(3)}`;
      s.dataset.pos = String(j);
      if (j === n - 1) s.classList.add("cb-token-active");
      if (j >= nPrompt) s.classList.add("cb-gen-generated");
    }
    const best = topAbs(w, 3);
    el("div", "cb-gen-note", attnBox).textContent =
      "top keys: " + best.map((j) => `#${j} ${JSON.stringify(toks[j] ?? "")} ${w[j].toFixed(2)}`).join(" · ");
    attnBox.dataset.top = String(best[0]);
  };

  const drawDla = (d: Decoded, sd: StepData) => {
    dlaBox.replaceChildren();
    const chosen = chosenText(d, step);
    el("div", "cb-gen-h", dlaBox).textContent = `Direct logit attribution of ${JSON.stringify(chosen)}`;
    if (!sd.dla) {
      el("div", "cb-gen-note", dlaBox).textContent = sd.dlaError || "not available for this capture.";
      return;
    }
    const vals = sd.dla;
    const C = vals.length;
    const order = topAbs(vals, DLA_SHOWN);
    const scale = Math.max(1e-9, ...order.map((i) => Math.abs(vals[i])));
    const list = el("div", "cb-gen-list", dlaBox);
    for (const i of order) {
      const label = sd.dlaLabels[i] ?? `#${i}`;
      const line = el("div", "cb-gen-line", list);
      line.dataset.label = label;
      el("span", "cb-gen-text", line).textContent = label;
      bar(line, Math.abs(vals[i]) / scale, vals[i] >= 0 ? "cb-pos" : "cb-neg");
      el("span", "cb-gen-num", line).textContent = vals[i].toFixed(2);
      const m = HEAD_RE.exec(label);
      if (m) {
        line.classList.add("cb-clickable");
        line.title = "show this head's attention";
        line.addEventListener("click", () => select(link, { layer: Number(m[1]), head: Number(m[2]) }), { signal });
      }
    }
    let total = 0;
    for (let i = 0; i < C; i++) total += vals[i];
    el("div", "cb-gen-note", dlaBox).textContent =
      `logit ${sd.dlaModel.toFixed(3)} = sum of ${C} components (${total.toFixed(3)})`;
  };

  // The selected step's internals: fetched once per (row, step), then drawn.
  let shown: StepData | null = null;
  let ticket = 0;
  const drawInternals = async () => {
    const d = current();
    const mine = ++ticket;
    const [r, s] = [rowIdx, step];
    shown = null;
    root.dataset.stepReady = "false";
    drawAttention(d, null);
    try {
      const { reply, buffers } = await fetcher.get({ kind: "fetch-step", row: r, step: s });
      if (mine !== ticket) return;
      shown = stepData(reply as unknown as Record<string, unknown>, buffers);
      drawLens(d, shown);
      drawAttention(d, shown);
      drawDla(d, shown);
      root.dataset.stepReady = "true";
    } catch (err) {
      if (mine !== ticket) return;
      for (const box of [lensBox, dlaBox]) {
        box.replaceChildren();
        const e = el("div", "cb-error", box);
        e.textContent = String((err as Error).message ?? err);
      }
    }
  };

  /** Live, a step's internals wait for the kernel (a few hundred ms under load). After the
   * first paint, fetch every step ahead: the selected row from the selected step on, then the
   * other rows, a step per message (a scrub to a step not fetched yet waits behind one), within
   * AHEAD_BYTES, so scrubbing draws from the cache. */
  let aheadRun = 0;
  const stepBytes = (s: number) =>
    (model.get("has_pattern") ? L * H * (nPrompt + s) : 0) + 8 * L * (H + 4) + 64 * L + 1024;
  const warmSteps = async () => {
    if (!prefetchAllowed(model)) return;
    const run = ++aheadRun;
    const t0 = performance.now();
    root.dataset.stepsAhead = "";
    const first = Math.min(rowIdx, rows.length - 1);
    const order: [number, number][] = [];
    for (const r of [first, ...rows.keys()].filter((r, i, all) => all.indexOf(r) === i)) {
      const S = rows[r].row.n_steps;
      const from = r === first ? step : 0;
      for (let i = 0; i < S; i++) order.push([r, (from + i) % S]);
    }
    let bytes = 0;
    let kept = 0;
    for (const [r, s] of order) {
      if (signal.aborted || run !== aheadRun) return;
      bytes += stepBytes(s);
      if (bytes > AHEAD_BYTES) break;
      try {
        await fetcher.get({ kind: "fetch-step", row: r, step: s }); // cached by the fetcher
      } catch {
        break; // the kernel is gone: the scrubber says so itself
      }
      kept += 1;
    }
    if (run !== aheadRun) return;
    root.dataset.stepsAhead = String(kept);
    root.dataset.stepsAheadMs = (performance.now() - t0).toFixed(0);
  };

  const drawMarks = () => {
    cells.forEach((rowCells, r) =>
      rowCells.forEach((c, s) => {
        c.classList.toggle("cb-gen-sel", s === step);
        c.classList.toggle("cb-gen-selrow", s === step && r === rowIdx);
      }),
    );
  };

  const drawStep = () => {
    const n = nSteps();
    step = Math.max(0, Math.min(n - 1, step));
    scrub.max = String(Math.max(0, n - 1));
    scrub.value = String(step);
    stepLabel.textContent = `step ${step} / ${n - 1} · row ${rowIdx}`;
    root.dataset.step = String(step);
    root.dataset.row = String(rowIdx);
    drawMarks();
    drawTop();
    return drawInternals();
  };

  let committing = false;
  /** Select a step (and row): the view, the Python traits and the shared token. */
  const choose = (s: number, r: number = rowIdx, commit = true) => {
    rowIdx = Math.max(0, Math.min(rows.length - 1, r));
    step = Math.max(0, Math.min(current().row.n_steps - 1, s));
    void drawStep();
    const token = nPrompt + step - 1;
    if (commit) {
      committing = true; // our own trait writes must not re-enter onTraits half-done
      try {
        model.set("row", rowIdx);
        model.set("step", step);
        model.save_changes();
      } finally {
        committing = false;
      }
      select(link, { token });
    } else hover(link, { hover_token: token });
  };

  timeline.addEventListener("click", (ev) => {
    const c = (ev.target as HTMLElement).closest(".cb-gen-tok, .cb-gen-kl") as HTMLElement | null;
    if (!c || c.classList.contains("cb-gen-empty")) return;
    choose(Number(c.dataset.step), Number(c.dataset.row));
  }, { signal });
  scrub.addEventListener("input", () => choose(Number(scrub.value), rowIdx, false), { signal });
  scrub.addEventListener("change", () => choose(Number(scrub.value)), { signal });
  root.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLSelectElement || ev.target instanceof HTMLInputElement) return;
    if (ev.key === "ArrowRight") choose(step + 1);
    else if (ev.key === "ArrowLeft") choose(step - 1);
    else if (ev.key === "ArrowDown") choose(step, rowIdx + 1);
    else if (ev.key === "ArrowUp") choose(step, rowIdx - 1);
    else return;
    ev.preventDefault();
  }, { signal });

  // Other views select a token: follow it when it is one of the steps' query positions.
  const onToken = () => {
    const t = link.get("token");
    if (t === null || t === undefined) return;
    const s = t - nPrompt + 1;
    if (s >= 0 && s < nSteps() && s !== step) {
      step = s;
      void drawStep();
    }
  };
  const onRows = () => {
    rows = model.get("_rows").map(decodeRow);
    strings = model.get("_strings");
    buildTimeline();
    void drawStep().then(warmSteps); // a new row (a fork): its steps too
  };
  const onTraits = () => {
    if (committing) return;
    const s = model.get("step");
    const r = model.get("row");
    if (s !== step || r !== rowIdx) {
      rowIdx = Math.max(0, Math.min(rows.length - 1, r));
      step = s;
      void drawStep();
    }
  };
  model.on("change:_rows", onRows);
  model.on("change:step", onTraits);
  model.on("change:row", onTraits);
  const offTok = onSelection(link, ["token"], onToken);
  const offHead = onSelection(link, ["layer", "head"], () => drawAttention(current(), shown));
  const offTheme = followTheme(model as AnyModel, root, () => {
    buildTimeline();
    void drawStep();
  });

  rowIdx = Math.max(0, Math.min(rows.length - 1, model.get("row")));
  step = model.get("step");
  buildTimeline();
  const firstPaint = drawStep();
  root.dataset.ready = "true";
  void firstPaint.then(warmSteps);

  return () => {
    abort.abort();
    offTok();
    offHead();
    offTheme();
    model.off("change:_rows", onRows);
    model.off("change:step", onTraits);
    model.off("change:row", onTraits);
    fetcher.dispose();
    root.remove();
  };
}
