// Neuron dashboard: top-activating examples (context coloured by the neuron, maximum outlined),
// a histogram of the neuron over the dataset, and the tokens it promotes / suppresses.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { cssColor } from "../colormaps";
import { Fetcher } from "../fetch";
import { onSelection, resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import { TokenStrip } from "../tokens";
import type { Encoded } from "../types";
import { activationLut } from "./neurons";
import { el } from "../dom";

interface Example {
  text_index: number;
  value: number;
  tokens: string[];
  max_at: number;
}

interface Card {
  layer: number;
  neuron: number;
  examples: Example[];
  acts: Encoded;
  hist_edges: number[];
  hist_counts: number[];
  hist_outside?: [number, number]; // tokens below the first edge / above the last
  stats: { count: number; mean: number; std: number; min: number; max: number; frac_positive: number };
  promoted: [string, number][];
  suppressed: [string, number][];
  label?: string; // dictionary features: the feature's name ("" when it has none)
  fires?: number; // dictionary features: tokens it fires on
  cofiring?: [number, number, number, string][]; // [feature, tokens with both, fraction, label]
}

interface DashboardState {
  neurons: [number, number][];
  n_texts: number;
  model_name: string;
  dictionary: { hook?: string; labels?: Record<string, string> };
  _initial: { layer: number; neuron: number; card: Card };
  theme: string;
  link: string;
}

const fmt = (v: number) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));
const NOOP = { hover: () => undefined, click: () => undefined };
const HIST_W = 280; // css px
const OUT_BAR = 10; // css px of a bar for the tokens beyond the edges
const OUT_GAP = 4;

export async function render(props: RenderProps<DashboardState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const neurons = model.get("neurons");
  const recorded = new Set(neurons.map(([l, n]) => `${l}:${n}`));

  const dict = model.get("dictionary") ?? {};
  const isFeatures = Boolean(dict.hook);
  const labels = dict.labels ?? {};
  const unit = isFeatures ? "F" : "N";
  const name = (l: number, n: number) => `L${l} ${unit}${n}`;

  const root = el("div", "cb-root cb-dashboard", host);
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = isFeatures ? "Feature" : "Neuron";
  const pick = el("select", "cb-select", header);
  pick.setAttribute("aria-label", isFeatures ? "feature" : "neuron");
  // an option's text is text: a label is never markup
  const short = (t: string) => (t.length > 48 ? `${t.slice(0, 47)}…` : t);
  for (const [l, n] of neurons) pick.add(new Option(labels[String(n)] ? `${name(l, n)} · ${short(labels[String(n)])}` : name(l, n), `${l}:${n}`));
  pick.classList.add("cb-dash-pick");
  const labelEl = el("span", "cb-dash-label", header);
  if (isFeatures) root.dataset.dictionary = dict.hook ?? "";
  const stats = el("span", "cb-status cb-dash-stats", header);
  const status = el("span", "cb-status", header);

  const body = el("div", "cb-body", root);
  const left = el("div", "cb-dash-examples", body);
  const exTitle = el("div", "cb-caption", left);
  const exList = el("div", "cb-dash-list", left);
  const right = el("div", "cb-dash-side", body);
  const histTitle = el("div", "cb-caption", right);
  const hist = el("canvas", "cb-dash-hist", right);
  hist.setAttribute("role", "img");
  const histAxis = el("div", "cb-dash-axis", right);
  const axLo = el("span", "", histAxis);
  const axZero = el("span", "", histAxis);
  const axHi = el("span", "", histAxis);
  const histTip = el("div", "cb-caption cb-dash-tip", right);
  el("div", "cb-caption", right).textContent = isFeatures ? "Direct logit effect (W_dec · W_U)" : "Direct logit effect (W_out · W_U)";
  const logits = el("div", "cb-dash-logits", right);
  const promoted = el("ol", "cb-dash-col", logits);
  const suppressed = el("ol", "cb-dash-col", logits);
  const coTitle = el("div", "cb-caption", right);
  const coList = el("ol", "cb-dash-cofire", right);
  coTitle.hidden = coList.hidden = !isFeatures;

  let lut = activationLut(false);
  let card: Card = model.get("_initial").card;
  let acts = decode(card.acts).data;

  /** The bins from the first to the last one with a count (bins that follow the data end on a
   * power-of-two lattice, so up to half of them can be empty). */
  const shownBins = () => {
    const all = card.hist_counts;
    let a = all.findIndex((c) => c > 0);
    let b = all.length - 1;
    while (b > 0 && !all[b]) b--;
    if (a < 0) [a, b] = [0, all.length - 1];
    return { counts: all.slice(a, b + 1), edges: card.hist_edges.slice(a, b + 2) };
  };
  /** The bins' pixel range: the ends are kept for the bars of tokens beyond the edges. */
  const histLayout = (w: number) => {
    const [below, above] = card.hist_outside ?? [0, 0];
    return { left: below ? OUT_BAR + OUT_GAP : 0, right: w - (above ? OUT_BAR + OUT_GAP : 0) };
  };
  const drawHist = () => {
    const dpr = window.devicePixelRatio || 1;
    const w = HIST_W;
    const h = 96;
    hist.width = w * dpr;
    hist.height = h * dpr;
    const ctx = hist.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const { counts, edges } = shownBins();
    const [below, above] = card.hist_outside ?? [0, 0];
    const { left: xl, right: xr } = histLayout(w);
    const top = Math.log1p(Math.max(...counts, below, above, 1));
    const bw = (xr - xl) / counts.length;
    const span = Math.max(Math.abs(edges[0]), Math.abs(edges[edges.length - 1]), 1e-9);
    const shade = (v: number) => {
      const t = 0.5 * Math.min(1, 0.35 + (0.65 * Math.abs(v)) / span);
      return cssColor(lut, v >= 0 ? 0.5 + t : 0.5 - t);
    };
    const height = (c: number) => Math.max(1, (Math.log1p(c) / top) * (h - 2));
    counts.forEach((c, i) => {
      if (!c) return;
      const mid = (edges[i] + edges[i + 1]) / 2;
      ctx.fillStyle = shade(mid);
      ctx.fillRect(xl + i * bw + 0.5, h - height(c), Math.max(1, bw - 1), height(c));
    });
    // Tokens beyond the edges (fixed before the scan, so shards merge): an outlined bar apart
    // at each end, labelled with the exact minimum / maximum.
    const outside = (c: number, x: number, v: number) => {
      if (!c) return;
      ctx.fillStyle = shade(v);
      ctx.globalAlpha = 0.45;
      ctx.fillRect(x, h - height(c), OUT_BAR, height(c));
      ctx.globalAlpha = 1;
      ctx.strokeStyle = shade(v);
      ctx.strokeRect(x + 0.5, h - height(c) + 0.5, OUT_BAR - 1, height(c) - 1);
    };
    outside(below, 0, card.stats.min);
    outside(above, w - OUT_BAR, card.stats.max);
    const beyond = below + above;
    histTitle.textContent = `Activation over every token (log count)${beyond ? ` · ${beyond.toLocaleString()} beyond the bins, at the ends` : ""}`;
    // zero line and the top examples' range
    const x0 = xl + ((0 - edges[0]) / (edges[edges.length - 1] - edges[0])) * (xr - xl);
    const zeroShown = edges[0] < 0 && edges[edges.length - 1] > 0;
    if (zeroShown) {
      ctx.strokeStyle = isDark(root) ? "#8d96a0" : "#656d76";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(Math.round(x0) + 0.5, 0);
      ctx.lineTo(Math.round(x0) + 0.5, h);
      ctx.stroke();
    }
    axLo.textContent = below ? `min ${fmt(card.stats.min)}` : fmt(edges[0]);
    axZero.textContent = zeroShown ? "0" : "";
    axZero.style.left = `${(100 * x0) / w}%`;
    axHi.textContent = above ? `max ${fmt(card.stats.max)}` : fmt(edges[edges.length - 1]);
    hist.setAttribute("aria-label", `histogram of ${name(card.layer, card.neuron)} activations`);
  };

  const draw = () => {
    lut = activationLut(isDark(root));
    const ex = card.examples;
    const width = card.acts.shape[1] ?? 0;
    const vmax = Math.max(Math.abs(ex[0]?.value ?? 0), 1e-9);
    const s = card.stats;
    stats.textContent = `max ${fmt(s.max)} · mean ${fmt(s.mean)} ± ${fmt(s.std)} · ${(100 * s.frac_positive).toFixed(1)}% > 0 · ${s.count.toLocaleString()} tokens`;
    exTitle.textContent = `Top ${ex.length} of ${model.get("n_texts")} texts${model.get("model_name") ? ` · ${model.get("model_name")}` : ""}`;
    const frag = document.createDocumentFragment();
    ex.forEach((e, r) => {
      const row = el("div", "cb-dash-row");
      row.dataset.rank = String(r);
      row.dataset.text = String(e.text_index);
      const v = el("span", "cb-dash-value", row);
      v.textContent = fmt(e.value);
      const strip = new TokenStrip(e.tokens, NOOP, signal);
      strip.el.classList.add("cb-dash-strip");
      const rowActs = acts.subarray(r * width, r * width + e.tokens.length);
      strip.color(rowActs, lut, (x) => Math.max(0, Math.min(1, 0.5 + (0.5 * x) / vmax)));
      e.tokens.forEach((t, i) => {
        const sp = strip.span(i);
        if (sp) sp.title = `${JSON.stringify(t)} · ${fmt(rowActs[i])}`;
      });
      strip.mark(e.max_at, "cb-token-max");
      row.appendChild(strip.el);
      frag.appendChild(row);
    });
    exList.replaceChildren(frag);
    const fill = (ol: HTMLOListElement, items: [string, number][]) => {
      const f = document.createDocumentFragment();
      for (const [tok, val] of items) {
        const li = el("li", "cb-dash-logit");
        el("span", "cb-dash-tok", li).textContent = JSON.stringify(tok);
        el("span", "cb-dash-num", li).textContent = `${val >= 0 ? "+" : ""}${fmt(val)}`;
        f.appendChild(li);
      }
      ol.replaceChildren(f);
    };
    fill(promoted, card.promoted);
    fill(suppressed, card.suppressed);
    labelEl.textContent = card.label ?? "";
    labelEl.hidden = !card.label;
    if (card.cofiring) {
      coTitle.textContent = `Fires most often with (of its ${(card.fires ?? 0).toLocaleString()} tokens)`;
      const f = document.createDocumentFragment();
      for (const [j, count, frac, lab] of card.cofiring) {
        const li = el("li", "cb-dash-co");
        li.dataset.feature = String(j);
        const known = recorded.has(`${card.layer}:${j}`);
        if (known) {
          li.classList.add("cb-clickable");
          li.addEventListener("click", () => select(link, { layer: card.layer, neuron: j }), { signal });
        }
        el("span", "cb-dash-coid", li).textContent = `F${j}`;
        el("span", "cb-dash-colabel", li).textContent = lab;
        el("span", "cb-dash-num", li).textContent = `${(100 * frac).toFixed(0)}% · ${count.toLocaleString()}`;
        li.title = `F${j}${lab ? ` ${lab}` : ""}: fires on ${count.toLocaleString()} of the ${(card.fires ?? 0).toLocaleString()} tokens F${card.neuron} fires on${known ? " (click to open)" : ""}`;
        f.appendChild(li);
      }
      coList.replaceChildren(f);
      if (!card.cofiring.length) coList.textContent = "no other feature fires on its tokens";
    }
    promoted.dataset.label = "promotes";
    suppressed.dataset.label = "suppresses";
    pick.value = `${card.layer}:${card.neuron}`;
    root.dataset.layer = String(card.layer);
    root.dataset.neuron = String(card.neuron);
    drawHist();
  };

  hist.addEventListener("pointermove", (ev) => {
    const r = hist.getBoundingClientRect();
    const x = ((ev.clientX - r.left) / r.width) * HIST_W;
    const { left: xl, right: xr } = histLayout(HIST_W);
    const { counts, edges } = shownBins();
    const [below, above] = card.hist_outside ?? [0, 0];
    if (x < xl) {
      histTip.textContent = `below ${fmt(edges[0])}: ${below.toLocaleString()} tokens (min ${fmt(card.stats.min)})`;
      return;
    }
    if (x >= xr) {
      histTip.textContent = `above ${fmt(edges[edges.length - 1])}: ${above.toLocaleString()} tokens (max ${fmt(card.stats.max)})`;
      return;
    }
    const i = Math.min(counts.length - 1, Math.floor(((x - xl) / (xr - xl)) * counts.length));
    histTip.textContent = `[${fmt(edges[i])}, ${fmt(edges[i + 1])}): ${counts[i].toLocaleString()} tokens`;
  }, { signal });
  hist.addEventListener("pointerleave", () => {
    histTip.textContent = "";
  }, { signal });

  let want = "";
  const show = async () => {
    const l = link.get("layer");
    const n = link.get("neuron");
    if (l === null || n === null || !recorded.has(`${l}:${n}`)) return; // not recorded: keep showing ours
    if (card.layer === l && card.neuron === n) return;
    const key = `${l}:${n}`;
    want = key;
    status.textContent = "loading…";
    try {
      const { reply, buffers } = await fetcher.get({ kind: "fetch-neuron-card", layer: l, neuron: n });
      if (want !== key) return;
      card = reply as unknown as Card;
      acts = decode(card.acts, buffers).data;
      status.textContent = "";
      draw();
    } catch (err) {
      if (want === key) status.textContent = String((err as Error).message ?? err);
    }
  };

  pick.addEventListener("change", () => {
    const [l, n] = pick.value.split(":").map(Number);
    select(link, { layer: l, neuron: n });
  }, { signal });

  const offSel = onSelection(link, ["layer", "neuron"], () => void show());
  const offTheme = followTheme(model as AnyModel, root, draw);
  draw();
  await show();
  root.dataset.ready = "true";

  return () => {
    abort.abort();
    offSel();
    offTheme();
    fetcher.dispose();
    root.remove();
  };
}
