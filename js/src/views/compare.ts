// Compare view: layers × heads heatmap of an effect size (Cohen's d, Welch's t, Δ mean)
// between two categories of prompts, per-layer attention / MLP output bars, top heads and
// top neurons. Effect sizes are computed here from each category's mean, std and n, so the
// pickers work the same live and in a static report; neuron rankings are fetched.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { cssColor, type Lut } from "../colormaps";
import { Fetcher } from "../fetch";
import { cellAt, paintMatrix } from "../heatmap";
import { onSelection, resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import type { Encoded } from "../types";
import { cellSize, divergingFor, fmt, symmetricMax } from "./attribution";
import { el } from "../dom";
import { type ImageInfo, PatchGrid } from "../patches";

type Measure = "d" | "t" | "diff";

interface CompareState {
  categories: string[];
  a: string;
  b: string;
  stat: string;
  measure: Measure;
  layers: number[];
  n_heads: number;
  counts: number[];
  n_prompts: number[];
  pos: string;
  k: number;
  head_stats: [string, string][];
  layer_stats: [string, string][];
  has_neurons: boolean;
  feature_dicts: [string, number][]; // [hook, layer] of each dictionary compared
  images: ImageInfo[]; // image categories: each one's mean image ([] for text)
  tokens: string[]; // image categories: CLS and the patches
  _patch_attn: Encoded | Record<string, never>; // [C, 2, L, H, T] attention to each key
  _heads: Encoded;
  _layer_vals: Encoded;
  theme: string;
  link: string;
}

const MEASURE_NAMES: Record<Measure, string> = { d: "Cohen's d", t: "Welch's t", diff: "Δ mean" };
/** Below this many samples in either group an effect size is marked as unreliable. */
export const SMALL_N = 20;

/** The caution shown with effects from groups of `na` and `nb` samples, or "" when ample. */
export function smallSampleNote(na: number, nb: number): string {
  const n = Math.min(na, nb);
  if (n >= SMALL_N) return "";
  return `⚠ tiny sample (n = ${na} vs ${nb}): with fewer than ${SMALL_N} per group, d and t swing widely from sample to sample; collect more prompts before trusting a ranking`;
}
const NEURON_COLS = 9; // layer, neuron, d, t, diff, mean_a, std_a, mean_b, std_b
const FEATURE_COLS = 9; // layer, feature, d, t, diff, mean_a, std_a, mean_b, std_b

/** Effect of a − b from means, standard deviations (ddof 1) and counts; NaN when n < 2. */
export function effectOf(ma: number, sa: number, na: number, mb: number, sb: number, nb: number, m: Measure): number {
  const diff = ma - mb;
  if (m === "diff") return diff;
  if (na < 2 || nb < 2 || !Number.isFinite(sa) || !Number.isFinite(sb)) return Number.NaN;
  const den = m === "d" ? Math.sqrt(((na - 1) * sa * sa + (nb - 1) * sb * sb) / (na + nb - 2)) : Math.sqrt((sa * sa) / na + (sb * sb) / nb);
  if (den > 0) return diff / den;
  return diff === 0 ? 0 : Math.sign(diff) * Number.POSITIVE_INFINITY;
}

function num(v: number): string {
  if (!Number.isFinite(v)) return Number.isNaN(v) ? "n/a" : v > 0 ? "+∞" : "−∞";
  return fmt(v);
}

function plain(v: number): string {
  if (!Number.isFinite(v)) return num(v);
  const a = Math.abs(v);
  const s = a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 0.01 || a === 0 ? v.toFixed(3) : v.toExponential(2);
  return s.replace("-", "−");
}

export async function render(props: RenderProps<CompareState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const cats = model.get("categories");
  const layers = model.get("layers");
  const L = layers.length;
  const H = model.get("n_heads");
  const counts = model.get("counts");
  const headStats = model.get("head_stats");
  const layerStats = model.get("layer_stats");
  const heads = decode(model.get("_heads")).data; // [S, C, 2, L, H]
  const layerVals = decode(model.get("_layer_vals")).data; // [S2, C, 2, L]
  const C = cats.length;
  const { w: cw, h: ch } = cellSize(L, H);
  const BAR_W = 64;
  const hasNeurons = model.get("has_neurons");
  const featureDicts = model.get("feature_dicts") ?? [];
  const hasFeatures = featureDicts.length > 0;

  const idx = (name: string, fallback: number) => {
    const i = cats.indexOf(name);
    return i >= 0 ? i : fallback;
  };
  const state = () => {
    const a = idx(model.get("a"), 0);
    let b = idx(model.get("b"), 1);
    if (b === a) b = a === 0 ? 1 : 0;
    const s = Math.max(0, headStats.findIndex(([n]) => n === model.get("stat")));
    const m = (["d", "t", "diff"].includes(model.get("measure")) ? model.get("measure") : "d") as Measure;
    return { a, b, s, m };
  };
  const headMoment = (s: number, c: number, which: 0 | 1, cell: number) => heads[((s * C + c) * 2 + which) * L * H + cell];
  const layerMoment = (s: number, c: number, which: 0 | 1, l: number) => layerVals[((s * C + c) * 2 + which) * L + l];

  const root = el("div", "cb-root cb-cmp", host);
  root.tabIndex = 0;
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Compare";
  const selA = el("select", "cb-select cb-cmp-pick", header);
  selA.setAttribute("aria-label", "category A");
  el("span", "cb-status", header).textContent = "vs";
  const selB = el("select", "cb-select cb-cmp-pick", header);
  selB.setAttribute("aria-label", "category B");
  cats.forEach((c, i) => {
    selA.add(new Option(c === "" ? "(empty name)" : c, String(i)));
    selB.add(new Option(c === "" ? "(empty name)" : c, String(i)));
  });
  const selStat = el("select", "cb-select", header);
  selStat.setAttribute("aria-label", "statistic");
  headStats.forEach(([, desc], i) => selStat.add(new Option(desc, String(i))));
  const selMeasure = el("select", "cb-select", header);
  selMeasure.setAttribute("aria-label", "measure");
  for (const m of ["d", "t", "diff"] as Measure[]) selMeasure.add(new Option(MEASURE_NAMES[m], m));
  const caption = el("div", "cb-caption cb-cmp-caption", root);

  const body = el("div", "cb-body", root);
  const figure = el("div", "cb-figure cb-cmp-figure", body);
  const grid = el("div", "cb-cmp-grid", figure);
  grid.style.gridTemplateColumns = `auto ${H * cw}px${layerStats.map(() => ` ${BAR_W}px`).join("")}`;
  el("div", "cb-cmp-corner", grid).textContent = "layer";
  const headAxis = el("div", "cb-cmp-haxis", grid);
  for (let h = 0; h < H; h++) {
    const s = el("span", "", headAxis);
    s.style.width = `${cw}px`;
    s.textContent = H <= 16 || h % 4 === 0 ? String(h) : "";
  }
  for (const [name] of layerStats) el("div", "cb-cmp-colhead", grid).textContent = name === "mlp_out" ? "MLP" : "attn";
  const layerAxis = el("div", "cb-cmp-laxis", grid);
  const step = ch >= 12 ? 1 : ch >= 8 ? 2 : 5;
  for (let r = 0; r < L; r++) {
    const s = el("div", "", layerAxis);
    s.style.height = `${ch}px`;
    s.style.lineHeight = `${ch}px`;
    s.textContent = r % step === 0 ? String(layers[r]) : "";
  }
  const heatWrap = el("div", "cb-cmp-heatwrap", grid);
  const heat = el("canvas", "cb-cmp-heat", heatWrap);
  heat.style.width = `${H * cw}px`;
  heat.style.height = `${L * ch}px`;
  heat.setAttribute("role", "img");
  heat.setAttribute("aria-label", `effect size between categories, ${L} layers × ${H} heads`);
  const marker = el("div", "cb-cmp-marker", heatWrap);
  marker.hidden = true;
  const bars = layerStats.map(([name]) => {
    const c = el("canvas", "cb-cmp-bars", grid);
    c.dataset.which = name;
    c.style.width = `${BAR_W}px`;
    c.style.height = `${L * ch}px`;
    c.setAttribute("role", "img");
    c.setAttribute("aria-label", `${name} effect per layer`);
    return c;
  });
  const legend = el("div", "cb-cmp-legend", figure);
  const legLo = el("span", "", legend);
  const ramp = el("canvas", "cb-cmp-ramp", legend);
  const legHi = el("span", "", legend);
  const legText = el("span", "cb-cmp-legtext", legend);
  // Image categories: mean images, and where the selected head looks from the sample position.
  const images = model.get("images") ?? [];
  const posLabel = `${model.get("pos")}${images.length && model.get("pos") === "0" ? " (CLS)" : ""}`;
  const ptokens = model.get("tokens") ?? [];
  const pa = model.get("_patch_attn");
  const patchAttn = images.length && pa && (pa as Encoded).shape ? decode(pa as Encoded).data : null;
  const T = ptokens.length;
  const imgBox = patchAttn ? el("div", "cb-cmp-images", figure) : null;
  const imgTitle = imgBox ? el("div", "cb-cmp-imgtitle", imgBox) : null;
  const imgRow = imgBox ? el("div", "cb-pm-pair", imgBox) : null;
  let meanGrids: [HTMLElement, PatchGrid][] = [];
  let effectGrid: PatchGrid | null = null;
  let imgKey = "";
  let effectLabel: HTMLElement | null = null;
  const tip = el("div", "cb-tip cb-cmp-tip", figure);
  tip.hidden = true;

  const side = el("div", "cb-side cb-cmp-side", body);
  const readout = el("div", "cb-cmp-readout", side);
  readout.textContent = `Hover a head, a bar${hasNeurons ? ", a neuron" : ""}${hasFeatures ? " or a feature" : ""}; click to select it in linked views.`;
  el("div", "cb-cmp-h", side).textContent = "Top heads";
  const headBox = el("div", "cb-cmp-list cb-cmp-heads", side);
  const neuronHead = el("div", "cb-cmp-h", side);
  const neuronTitle = el("span", "", neuronHead);
  const scopeSel = el("select", "cb-select", neuronHead);
  scopeSel.setAttribute("aria-label", "neuron scope");
  scopeSel.add(new Option("all layers", "all"));
  scopeSel.add(new Option("selected layer", "layer"));
  const neuronBox = el("div", "cb-cmp-list cb-cmp-neurons", side);
  if (!hasNeurons) {
    neuronHead.hidden = true;
    neuronBox.hidden = true;
  }
  // Dictionary features (compare(..., saes=)): ranked like neurons, labels shown as text.
  const featureHead = el("div", "cb-cmp-h", side);
  const featureTitle = el("span", "", featureHead);
  featureTitle.textContent = "Top features";
  const featureBox = el("div", "cb-cmp-list cb-cmp-features", side);
  if (!hasFeatures) {
    featureHead.hidden = true;
    featureBox.hidden = true;
  } else if (!hasNeurons) {
    // one scope picker for both lists: without neurons it sits with the features
    scopeSel.setAttribute("aria-label", "feature scope");
    featureHead.appendChild(scopeSel);
    neuronHead.hidden = true;
  }

  // Current values of the heatmap and bars, recomputed when a picker changes.
  let vals = new Float32Array(L * H);
  let barVals: Float32Array[] = [];
  let vmax = 1;
  let barMax = 1;
  const compute = () => {
    const { a, b, s, m } = state();
    vals = new Float32Array(L * H);
    for (let i = 0; i < L * H; i++) {
      vals[i] = effectOf(headMoment(s, a, 0, i), headMoment(s, a, 1, i), counts[a], headMoment(s, b, 0, i), headMoment(s, b, 1, i), counts[b], m);
    }
    barVals = layerStats.map((_, k) => {
      const out = new Float32Array(L);
      for (let l = 0; l < L; l++) out[l] = effectOf(layerMoment(k, a, 0, l), layerMoment(k, a, 1, l), counts[a], layerMoment(k, b, 0, l), layerMoment(k, b, 1, l), counts[b], m);
      return out;
    });
    vmax = symmetricMax(vals);
    barMax = symmetricMax(barVals.flatMap((v) => Array.from(v)));
    root.dataset.a = String(a);
    root.dataset.b = String(b);
    root.dataset.stat = headStats[s][0];
    root.dataset.measure = m;
    selA.value = String(a);
    selB.value = String(b);
    selStat.value = String(s);
    selMeasure.value = m;
    const name = (i: number) => `“${cats[i]}”`;
    const np = model.get("n_prompts");
    caption.textContent = `${MEASURE_NAMES[m]} of ${headStats[s][1]}: ${name(a)} − ${name(b)} · n = ${counts[a]} vs ${counts[b]}${
      np[a] && np[a] !== counts[a] ? ` samples (${np[a]} vs ${np[b]} prompts)` : ""
    } · position ${posLabel}`;
    const caution = smallSampleNote(counts[a], counts[b]);
    if (caution) {
      const warn = el("span", "cb-error cb-cmp-small", caption);
      warn.textContent = ` · ${caution}`;
      root.dataset.smallSample = "true";
    } else {
      delete root.dataset.smallSample;
    }
    legLo.textContent = num(-vmax);
    legHi.textContent = num(vmax);
    legText.textContent = `blue: higher in ${name(a)}`;
  };

  const dpr = () => Math.max(1, Math.round(window.devicePixelRatio || 1));
  const css = (name: string) => getComputedStyle(root).getPropertyValue(name).trim() || "#888";
  const clampInf = (v: number, max: number) => (v === Number.POSITIVE_INFINITY ? max : v === Number.NEGATIVE_INFINITY ? -max : v);

  const drawHeat = () => {
    const lut = divergingFor(isDark(root));
    const unit = (v: number) => 0.5 + (0.5 * v) / vmax;
    const shown = vals.map((v) => clampInf(v, vmax));
    const gray: [number, number, number] = isDark(root) ? [60, 64, 70] : [200, 200, 200];
    paintMatrix(heat, L, H, shown, lut, unit, gray);
    paintMatrix(ramp, 1, 64, Array.from({ length: 64 }, (_, i) => -vmax + (2 * vmax * i) / 63), lut, unit);
  };

  const drawBars = () => {
    const lut: Lut = divergingFor(isDark(root));
    const selRow = layers.indexOf(link.get("layer") ?? -1);
    bars.forEach((c, k) => {
      const v = barVals[k];
      const r = dpr();
      c.width = BAR_W * r;
      c.height = L * ch * r;
      const ctx = c.getContext("2d");
      if (!ctx) return;
      ctx.scale(r, r);
      ctx.clearRect(0, 0, BAR_W, L * ch);
      const mid = BAR_W / 2;
      for (let l = 0; l < L; l++) {
        if (selRow === l) {
          ctx.fillStyle = css("--cb-panel");
          ctx.fillRect(0, l * ch, BAR_W, ch);
        }
        const x = clampInf(v[l], barMax);
        if (!Number.isFinite(x)) continue;
        const len = (Math.abs(x) / barMax) * (mid - 2);
        ctx.fillStyle = cssColor(lut, 0.5 + (0.5 * x) / barMax);
        const pad = ch > 8 ? 2 : 1;
        ctx.fillRect(x >= 0 ? mid : mid - len, l * ch + pad, len, ch - 2 * pad);
      }
      ctx.strokeStyle = css("--cb-border");
      ctx.beginPath();
      ctx.moveTo(mid + 0.5, 0);
      ctx.lineTo(mid + 0.5, L * ch);
      ctx.stroke();
    });
  };

  const drawSelection = () => {
    const row = layers.indexOf(link.get("layer") ?? -1);
    const h = link.get("head");
    const ok = row >= 0 && h !== null && h !== undefined && h >= 0 && h < H;
    marker.hidden = !ok;
    if (ok) {
      marker.style.left = `${h * cw}px`;
      marker.style.top = `${row * ch}px`;
      marker.style.width = `${cw}px`;
      marker.style.height = `${ch}px`;
      root.dataset.head = String(h);
    } else delete root.dataset.head;
    const l = link.get("layer");
    if (l !== null && l !== undefined) root.dataset.layer = String(l);
    else delete root.dataset.layer;
    for (const row of headBox.children) {
      const e = row as HTMLElement;
      e.classList.toggle("cb-cmp-row-active", Number(e.dataset.layer) === l && Number(e.dataset.head) === h);
    }
    for (const row of neuronBox.children) {
      const e = row as HTMLElement;
      e.classList.toggle("cb-cmp-row-active", Number(e.dataset.layer) === l && Number(e.dataset.neuron) === link.get("neuron"));
    }
    for (const row of featureBox.children) {
      const e = row as HTMLElement;
      e.classList.toggle("cb-cmp-row-active", e.dataset.dictionary === link.get("dictionary") && Number(e.dataset.feature) === link.get("feature"));
    }
  };

  const listRow = (box: HTMLElement, label: string, value: number, max: number, onClick: () => void, onHover: () => void) => {
    const row = el("div", "cb-cmp-row cb-clickable", box);
    el("span", "cb-cmp-label", row).textContent = label;
    const track = el("span", "cb-cmp-track", row);
    const bar = el("span", "cb-cmp-fill", track);
    const frac = Number.isFinite(value) ? Math.min(1, Math.abs(value) / max) : Number.isNaN(value) ? 0 : 1;
    bar.style.width = `${50 * frac}%`;
    bar.style.left = value >= 0 ? "50%" : `${50 - 50 * frac}%`;
    bar.classList.add(value >= 0 ? "cb-pos" : "cb-neg");
    el("span", "cb-cmp-value", row).textContent = num(value);
    row.addEventListener("click", onClick, { signal });
    row.addEventListener("pointerenter", onHover, { signal });
    return row;
  };

  const headText = (r: number, h: number) => {
    const { a, b, s } = state();
    const i = r * H + h;
    const ms = (c: number) => `${plain(headMoment(s, c, 0, i))} ± ${plain(headMoment(s, c, 1, i))} (n=${counts[c]})`;
    const e = (m: Measure) => num(effectOf(headMoment(s, a, 0, i), headMoment(s, a, 1, i), counts[a], headMoment(s, b, 0, i), headMoment(s, b, 1, i), counts[b], m));
    return `L${layers[r]}H${h} · ${headStats[s][1]}\nd ${e("d")} · t ${e("t")} · Δ ${e("diff")}${smallSampleNote(counts[a], counts[b]) ? ` (tiny sample: n = ${counts[a]} vs ${counts[b]})` : ""}\n${cats[a]}: ${ms(a)}\n${cats[b]}: ${ms(b)}`;
  };
  const barText = (k: number, r: number) => {
    const { a, b } = state();
    const ms = (c: number) => `${plain(layerMoment(k, c, 0, r))} ± ${plain(layerMoment(k, c, 1, r))} (n=${counts[c]})`;
    const e = (m: Measure) => num(effectOf(layerMoment(k, a, 0, r), layerMoment(k, a, 1, r), counts[a], layerMoment(k, b, 0, r), layerMoment(k, b, 1, r), counts[b], m));
    return `L${layers[r]} ${layerStats[k][1]}\nd ${e("d")} · t ${e("t")} · Δ ${e("diff")}${smallSampleNote(counts[a], counts[b]) ? ` (tiny sample: n = ${counts[a]} vs ${counts[b]})` : ""}\n${cats[a]}: ${ms(a)}\n${cats[b]}: ${ms(b)}`;
  };

  const showHeads = () => {
    const order = Array.from({ length: L * H }, (_, i) => i)
      .filter((i) => !Number.isNaN(vals[i]))
      .sort((x, y) => Math.abs(vals[y]) - Math.abs(vals[x]) || x - y)
      .slice(0, 8);
    headBox.replaceChildren();
    for (const i of order) {
      const r = Math.floor(i / H);
      const h = i % H;
      const row = listRow(headBox, `L${layers[r]}H${h}`, vals[i], vmax, () => select(link, { layer: layers[r], head: h }), () => {
        readout.textContent = headText(r, h);
      });
      row.dataset.layer = String(layers[r]);
      row.dataset.head = String(h);
    }
  };

  let neuronToken = 0;
  let neuronKey = "";
  const showNeurons = async () => {
    if (!hasNeurons) return;
    const { a, b, m } = state();
    const l = link.get("layer");
    const scoped = scopeSel.value === "layer" && l !== null && l !== undefined && layers.includes(l);
    const layer = scoped ? l : null;
    const key = `${a},${b},${m},${layer}`;
    if (key === neuronKey) return;
    const token = ++neuronToken;
    neuronTitle.textContent = layer === null ? "Top neurons" : `Top neurons in L${layer}`;
    let rows: Float32Array;
    try {
      const { reply, buffers } = await fetcher.get({ kind: "fetch-neurons", a, b, by: m, layer });
      rows = decode(reply.rows as Encoded, buffers).data;
    } catch (err) {
      if (token !== neuronToken) return;
      neuronBox.textContent = String((err as Error).message ?? err);
      neuronKey = "";
      return;
    }
    if (token !== neuronToken) return;
    neuronKey = key;
    neuronBox.replaceChildren();
    const n = rows.length / NEURON_COLS;
    const col = m === "d" ? 2 : m === "t" ? 3 : 4;
    const values = Array.from({ length: n }, (_, i) => rows[i * NEURON_COLS + col]);
    const max = symmetricMax(values.map((v) => (Number.isFinite(v) ? v : 0)));
    for (let i = 0; i < n; i++) {
      const o = i * NEURON_COLS;
      const nl = rows[o];
      const nn = rows[o + 1];
      const text = `L${nl} N${nn} · neuron activation\nd ${num(rows[o + 2])} · t ${num(rows[o + 3])} · Δ ${num(rows[o + 4])}${smallSampleNote(counts[a], counts[b]) ? ` (tiny sample: n = ${counts[a]} vs ${counts[b]})` : ""}\n${cats[a]}: ${plain(rows[o + 5])} ± ${plain(rows[o + 6])} (n=${counts[a]})\n${cats[b]}: ${plain(rows[o + 7])} ± ${plain(rows[o + 8])} (n=${counts[b]})`;
      const row = listRow(neuronBox, `L${nl} N${nn}`, values[i], max, () => select(link, { layer: nl, neuron: nn }), () => {
        readout.textContent = text;
        root.dataset.hover = `L${nl}N${nn}`;
      });
      row.dataset.layer = String(nl);
      row.dataset.neuron = String(nn);
    }
    root.dataset.neuronScope = layer === null ? "all" : String(layer);
    root.dataset.neurons = key;
    drawSelection();
  };

  let featureToken = 0;
  let featureKey = "";
  const showFeatures = async () => {
    if (!hasFeatures) return;
    const { a, b, m } = state();
    const l = link.get("layer");
    const scoped = scopeSel.value === "layer" && l !== null && l !== undefined && featureDicts.some(([, dl]) => dl === l);
    const layer = scoped ? l : null;
    const key = `${a},${b},${m},${layer}`;
    if (key === featureKey) return;
    const token = ++featureToken;
    featureTitle.textContent = layer === null ? "Top features" : `Top features in L${layer}`;
    let rows: Float32Array;
    let hooks: string[];
    let names: string[];
    try {
      const { reply, buffers } = await fetcher.get({ kind: "fetch-features", a, b, by: m, layer });
      rows = decode(reply.rows as Encoded, buffers).data;
      hooks = reply.hooks as string[];
      names = reply.names as string[];
    } catch (err) {
      if (token !== featureToken) return;
      featureBox.textContent = String((err as Error).message ?? err);
      featureKey = "";
      return;
    }
    if (token !== featureToken) return;
    featureKey = key;
    featureBox.replaceChildren();
    const n = rows.length / FEATURE_COLS;
    const col = m === "d" ? 2 : m === "t" ? 3 : 4;
    const values = Array.from({ length: n }, (_, i) => rows[i * FEATURE_COLS + col]);
    const max = symmetricMax(values.map((v) => (Number.isFinite(v) ? v : 0)));
    for (let i = 0; i < n; i++) {
      const o = i * FEATURE_COLS;
      const fl = rows[o];
      const f = rows[o + 1];
      const name = names[i] ?? "";
      const id = `L${fl} F${f}`;
      // the label stays in the row: a long one here would wrap and move the list under the pointer
      const text = `${id} · ${hooks[i]}\nd ${num(rows[o + 2])} · t ${num(rows[o + 3])} · Δ ${num(rows[o + 4])}${smallSampleNote(counts[a], counts[b]) ? ` (tiny sample: n = ${counts[a]} vs ${counts[b]})` : ""}\n${cats[a]}: ${plain(rows[o + 5])} ± ${plain(rows[o + 6])} (n=${counts[a]})\n${cats[b]}: ${plain(rows[o + 7])} ± ${plain(rows[o + 8])} (n=${counts[b]})`;
      const row = listRow(featureBox, id, values[i], max, () => select(link, { layer: fl, dictionary: hooks[i], feature: f }), () => {
        readout.textContent = text;
        root.dataset.hover = `L${fl}F${f}`;
      });
      if (name) {
        // the label, always as text: a user's label is never markup
        const lab = el("span", "cb-cmp-fname", row.firstElementChild as HTMLElement);
        lab.textContent = ` ${name}`;
        row.title = `${id} ${name}`;
      }
      row.dataset.layer = String(fl);
      row.dataset.dictionary = hooks[i];
      row.dataset.feature = String(f);
    }
    root.dataset.features = key;
    drawSelection();
  };

  const show = (text: string, label: string, ev: PointerEvent) => {
    tip.hidden = false;
    tip.textContent = text;
    const fr = figure.getBoundingClientRect();
    tip.style.left = `${Math.max(0, Math.min(ev.clientX - fr.left + 12, fr.width - 40))}px`;
    tip.style.top = `${ev.clientY - fr.top + 12}px`;
    root.dataset.hover = label;
    readout.textContent = text;
  };
  const hide = () => {
    tip.hidden = true;
    delete root.dataset.hover;
  };

  heat.addEventListener("pointermove", (ev) => {
    const cell = cellAt(heat, ev);
    if (!cell) return hide();
    show(headText(cell.row, cell.col), `L${layers[cell.row]}H${cell.col}`, ev);
  }, { signal });
  heat.addEventListener("pointerleave", hide, { signal });
  heat.addEventListener("click", (ev) => {
    const cell = cellAt(heat, ev);
    if (cell) select(link, { layer: layers[cell.row], head: cell.col });
  }, { signal });
  bars.forEach((c, k) => {
    const rowAt = (ev: PointerEvent | MouseEvent) => {
      const r = c.getBoundingClientRect();
      const row = Math.floor(((ev.clientY - r.top) / r.height) * L);
      return row >= 0 && row < L ? row : null;
    };
    c.addEventListener("pointermove", (ev) => {
      const r = rowAt(ev);
      if (r === null) return hide();
      show(barText(k, r), `L${layers[r]}.${layerStats[k][0]}`, ev);
    }, { signal });
    c.addEventListener("pointerleave", hide, { signal });
    c.addEventListener("click", (ev) => {
      const r = rowAt(ev);
      if (r === null) return;
      if (layerStats[k][0] === "mlp_out") scopeSel.value = "layer";
      select(link, { layer: layers[r] });
      void showNeurons();
      void showFeatures();
    }, { signal });
  });

  // The head the image panel shows: the selected one, else the strongest of the heatmap.
  const panelHead = (): [number, number] => {
    const r = layers.indexOf(link.get("layer") ?? -1);
    const h = link.get("head");
    if (r >= 0 && h !== null && h !== undefined && h >= 0 && h < H) return [r, h];
    let best = 0;
    for (let i = 0; i < L * H; i++) if (Math.abs(clampInf(vals[i], 1e9) || 0) > Math.abs(clampInf(vals[best], 1e9) || 0)) best = i;
    return [Math.floor(best / H), best % H];
  };
  const attnMoment = (c: number, which: 0 | 1, r: number, h: number, t: number) => (patchAttn as Float32Array)[((((c * 2 + which) * L + r) * H + h) * T) + t];
  const patchName = (t: number) => (t === 0 ? "CLS" : `patch ${ptokens[t]}`);
  /** Category a − b effect (measure m) on head (r, h)'s attention to key t. */
  const patchEffect = (a: number, b: number, r: number, h: number, t: number, m: Measure) =>
    effectOf(attnMoment(a, 0, r, h, t), attnMoment(a, 1, r, h, t), counts[a], attnMoment(b, 0, r, h, t), attnMoment(b, 1, r, h, t), counts[b], m);
  const drawImages = () => {
    if (!imgBox || !imgRow || !imgTitle || !patchAttn) return;
    const { a, b, m } = state();
    const [r, h] = panelHead();
    const key = `${a},${b}`;
    if (key !== imgKey) {
      imgKey = key;
      imgRow.replaceChildren();
      const make = (label: string, info: ImageInfo, onHover: (i: number | null) => void, onClick: (i: number) => void) => {
        const item = el("div", "cb-pm-item", imgRow);
        el("div", "cb-pm-label", item).textContent = label;
        const g = new PatchGrid(ptokens, info, { hover: onHover, click: onClick }, signal, 24);
        item.appendChild(g.el);
        return [item, g] as [HTMLElement, PatchGrid];
      };
      const clickPatch = (i: number) => {
        const [rr, hh] = panelHead();
        select(link, { layer: layers[rr], head: hh, token: i });
      };
      meanGrids = [a, b].map((c) => make(`mean image of “${cats[c]}” (n = ${model.get("n_prompts")[c] || counts[c]})`, images[c], (i) => hoverPatch(i), clickPatch));
      const [eItem, eGrid] = make("", images[a], (i) => hoverPatch(i), clickPatch);
      eItem.classList.add("cb-cmp-effect");
      effectLabel = eItem.firstElementChild as HTMLElement;
      effectGrid = eGrid;
    }
    imgTitle.textContent = `Where L${layers[r]}H${h} looks from position ${posLabel}: ${MEASURE_NAMES[m]} of its attention to each key, “${cats[a]}” − “${cats[b]}” (blue: more in “${cats[a]}”)`;
    imgBox.dataset.head = `L${layers[r]}H${h}`;
    const eff = new Float32Array(T);
    for (let t = 0; t < T; t++) eff[t] = patchEffect(a, b, r, h, t, m);
    const emax = symmetricMax(eff);
    if (effectLabel) effectLabel.textContent = `effect on attention to each key (colour ±${plain(emax)}), over the mean “${cats[a]}”`;
    const lut = divergingFor(isDark(root));
    effectGrid?.color(eff.map((v) => clampInf(v, emax)), lut, (v) => 0.5 + (0.5 * v) / emax);
    const t = link.get("token");
    for (const [, g] of meanGrids) g.mark(t ?? null, "cb-token-active");
    effectGrid?.mark(t ?? null, "cb-token-active");
  };
  function hoverPatch(t: number | null): void {
    if (t === null || !patchAttn) return hide();
    const { a, b } = state();
    const [r, h] = panelHead();
    const e = (m: Measure) => num(patchEffect(a, b, r, h, t, m));
    const ms = (c: number) => `${plain(attnMoment(c, 0, r, h, t))} ± ${plain(attnMoment(c, 1, r, h, t))} (n=${counts[c]})`;
    readout.textContent = `L${layers[r]}H${h} → ${patchName(t)} · attention\nd ${e("d")} · t ${e("t")} · Δ ${e("diff")}\n${cats[a]}: ${ms(a)}\n${cats[b]}: ${ms(b)}`;
    root.dataset.hover = `L${layers[r]}H${h}→${t}`;
  }

  const redraw = () => {
    compute();
    drawHeat();
    drawBars();
    showHeads();
    drawSelection();
    drawImages();
    void showNeurons();
    void showFeatures();
  };
  const setTrait = (key: "a" | "b" | "stat" | "measure", value: string) => {
    model.set(key, value);
    model.save_changes();
  };
  selA.addEventListener("change", () => {
    const { a, b } = state();
    const next = Number(selA.value);
    if (next === b) setTrait("b", cats[a]); // picking B's category swaps the two
    setTrait("a", cats[next]);
  }, { signal });
  selB.addEventListener("change", () => {
    const { a, b } = state();
    const next = Number(selB.value);
    if (next === a) setTrait("a", cats[b]);
    setTrait("b", cats[next]);
  }, { signal });
  selStat.addEventListener("change", () => setTrait("stat", headStats[Number(selStat.value)][0]), { signal });
  selMeasure.addEventListener("change", () => setTrait("measure", selMeasure.value), { signal });
  scopeSel.addEventListener("change", () => {
    void showNeurons();
    void showFeatures();
  }, { signal });
  root.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") select(link, { head: null });
  }, { signal });

  const onModel = () => redraw();
  for (const k of ["a", "b", "stat", "measure"]) model.on(`change:${k}`, onModel);
  const offSel = onSelection(link, ["layer", "head", "neuron", "token", "dictionary", "feature"], () => {
    drawSelection();
    drawBars();
    drawImages();
    if (scopeSel.value === "layer") {
      void showNeurons();
      void showFeatures();
    }
  });
  compute();
  const offTheme = followTheme(model as AnyModel, root, () => {
    drawHeat();
    drawBars();
    imgKey = "";
    drawImages();
  });
  drawHeat();
  drawBars();
  showHeads();
  drawSelection();
  drawImages();
  await showNeurons();
  await showFeatures();
  root.dataset.ready = "true";

  return () => {
    abort.abort();
    for (const k of ["a", "b", "stat", "measure"]) model.off(`change:${k}`, onModel);
    offSel();
    offTheme();
    fetcher.dispose();
    root.remove();
  };
}
