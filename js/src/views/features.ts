// Features view: a prompt's tokens coloured by one dictionary feature, the features that fire
// most at the hovered token, and a searchable list of the prompt's features (by index, by
// label, by "fires on this token"). Each dictionary's active features arrive once as COO
// triples (rows, cols, values); everything else is computed here.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { cssColor } from "../colormaps";
import { el } from "../dom";
import { Fetcher } from "../fetch";
import { figureHooks } from "../figure";
import { hover, onSelection, resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import { TokenStrip } from "../tokens";
import type { Encoded } from "../types";
import { activationLut, unitOf } from "./neurons";

interface DictionaryInfo {
  hook: string;
  layer: number;
  d_sae: number;
  labels: Record<string, string>;
}

interface FeaturesState {
  tokens: string[];
  dictionaries: DictionaryInfo[];
  n_top: number;
  _initial: { dictionary: string; feature: number };
  theme: string;
  link: string;
}

/** One dictionary's active features on the prompt, as COO triples. */
export interface Sparse {
  rows: Float32Array;
  cols: Float32Array;
  values: Float32Array;
  n: number;
}

/** Feature `f`'s activation at every position (zero where silent). */
export function featureColumn(s: Sparse, f: number): Float32Array {
  const out = new Float32Array(s.n);
  for (let i = 0; i < s.cols.length; i++) if (s.cols[i] === f) out[s.rows[i]] = s.values[i];
  return out;
}

/** The `k` features with the largest activation at position `t`. */
export function topAt(s: Sparse, t: number, k: number): { features: number[]; values: number[] } {
  const hits: [number, number][] = [];
  for (let i = 0; i < s.rows.length; i++) if (s.rows[i] === t) hits.push([s.cols[i], s.values[i]]);
  hits.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  const top = hits.slice(0, k);
  return { features: top.map((h) => h[0]), values: top.map((h) => h[1]) };
}

/** Every active feature with its largest activation on the prompt, strongest first. */
export function activeFeatures(s: Sparse): { feature: number; max: number }[] {
  const best = new Map<number, number>();
  for (let i = 0; i < s.cols.length; i++) {
    const f = s.cols[i];
    const v = s.values[i];
    if (!best.has(f) || v > (best.get(f) as number)) best.set(f, v);
  }
  return [...best.entries()].map(([feature, max]) => ({ feature, max })).sort((a, b) => b.max - a.max || a.feature - b.feature);
}

/**
 * Features matching a search: a number finds that index (active or not); other text matches
 * labels (case-insensitive substring); `onToken` keeps only features firing at that token.
 */
export function searchFeatures(
  s: Sparse, labels: Record<string, string>, dSae: number, query: string, onToken: number | null,
): { feature: number; max: number }[] {
  let found = activeFeatures(s);
  const q = query.trim().toLowerCase();
  if (/^#?\d+$/.test(q)) {
    const f = Number(q.replace("#", ""));
    if (f >= dSae) return [];
    const hit = found.find((x) => x.feature === f);
    found = [hit ?? { feature: f, max: 0 }];
  } else if (q) {
    found = found.filter((x) => (labels[String(x.feature)] ?? "").toLowerCase().includes(q));
    // named features that are silent on this prompt can still be opened
    for (const [k, v] of Object.entries(labels)) {
      if (v.toLowerCase().includes(q) && !found.some((x) => x.feature === Number(k))) found.push({ feature: Number(k), max: 0 });
    }
  }
  if (onToken !== null) {
    const here = new Set<number>();
    for (let i = 0; i < s.rows.length; i++) if (s.rows[i] === onToken) here.add(s.cols[i]);
    found = found.filter((x) => here.has(x.feature));
  }
  return found;
}

const fmt = (v: number) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));

export async function render(props: RenderProps<FeaturesState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const tokens = model.get("tokens");
  const dicts = model.get("dictionaries");
  const nTop = model.get("n_top");
  const byHook = new Map(dicts.map((d) => [d.hook, d]));
  const cache = new Map<string, Promise<Sparse>>();

  const sparseOf = (hook: string): Promise<Sparse> => {
    let p = cache.get(hook);
    if (!p) {
      p = fetcher.get({ kind: "fetch-dictionary", dictionary: hook }).then(({ reply, buffers }) => ({
        rows: decode(reply.rows as Encoded, buffers).data,
        cols: decode(reply.cols as Encoded, buffers).data,
        values: decode(reply.values as Encoded, buffers).data,
        n: tokens.length,
      }));
      p.catch(() => cache.delete(hook));
      cache.set(hook, p);
    }
    return p;
  };

  const root = el("div", "cb-root cb-features", host);
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Features";
  const dictSel = el("select", "cb-select", header);
  dictSel.setAttribute("aria-label", "dictionary");
  for (const d of dicts) dictSel.add(new Option(d.hook, d.hook));
  const featLabel = el("label", "cb-field", header);
  featLabel.textContent = "Feature ";
  const featIn = el("input", "cb-input", featLabel);
  featIn.type = "number";
  featIn.min = "0";
  featIn.setAttribute("aria-label", "feature");
  const legend = el("span", "cb-legend", header);
  el("span", "cb-legend-label", legend).textContent = "activation";
  const bar = el("span", "cb-legend-bar", legend);
  const hi = el("span", "cb-legend-label", legend);
  const status = el("span", "cb-status", header);
  status.setAttribute("aria-live", "polite");

  const body = el("div", "cb-body", root);
  const main = el("div", "cb-neurons-main", body);
  const caption = el("div", "cb-caption", main);
  const strip = new TokenStrip(tokens, {
    hover: (i) => hover(link, { hover_token: i }),
    click: (i) => select(link, { token: link.get("token") === i ? null : i }),
  }, signal);
  main.appendChild(strip.el);
  const side = el("div", "cb-neurons-side", body);
  const topTitle = el("div", "cb-caption", side);
  const topList = el("ol", "cb-neuron-list cb-feature-top", side);
  const searchBox = el("div", "cb-feature-search", side);
  const search = el("input", "cb-input", searchBox);
  search.type = "search";
  search.placeholder = "index or label";
  search.setAttribute("aria-label", "search features");
  const hereLabel = el("label", "cb-check", searchBox);
  const here = el("input", "", hereLabel);
  here.type = "checkbox";
  here.setAttribute("aria-label", "fires on this token");
  hereLabel.append(" fires on this token");
  const found = el("ol", "cb-neuron-list cb-feature-found", side);

  const init = model.get("_initial");
  let hook = init.dictionary;
  let feature = init.feature;
  let values: Float32Array = new Float32Array(tokens.length);

  const activeToken = (): number | null => link.get("token") ?? link.get("hover_token") ?? null;
  const labelOf = (h: string, f: number) => byHook.get(h)?.labels[String(f)];
  const name = (h: string, f: number) => {
    const d = byHook.get(h);
    const label = labelOf(h, f);
    return `${d ? `L${d.layer} ` : ""}F${f}${label ? ` ${label}` : ""}`;
  };

  const row = (list: HTMLElement, f: number, v: number, biggest: number) => {
    const li = el("li", "cb-neuron-row", list);
    const btn = el("button", "cb-neuron-pick cb-feature-pick", li);
    btn.dataset.feature = String(f);
    btn.textContent = `F${f}`;
    const label = labelOf(hook, f);
    btn.title = label ? `feature ${f}: ${label}` : `select feature ${f}`;
    const barBox = el("span", "cb-neuron-bar", li);
    const fill = el("span", "cb-neuron-fill", barBox);
    fill.style.width = `${Math.max(0, (100 * v) / Math.max(biggest, 1e-9))}%`;
    el("span", "cb-neuron-value", li).textContent = fmt(v);
    if (label) el("span", "cb-feature-label", li).textContent = label; // text, never HTML
    btn.classList.toggle("cb-selected", f === feature);
  };

  const drawColumn = () => {
    const lut = activationLut(isDark(root));
    let vmax = 0;
    let best = 0;
    for (let i = 0; i < values.length; i++) {
      vmax = Math.max(vmax, Math.abs(values[i]));
      if (values[i] > values[best]) best = i;
    }
    const scale = vmax > 0 ? vmax : 1;
    bar.style.background = `linear-gradient(to right, ${[0.5, 0.75, 1].map((t) => cssColor(lut, t)).join(", ")})`;
    strip.color(values, lut, (v) => unitOf(v, scale));
    for (let i = 0; i < values.length; i++) {
      const s = strip.span(i);
      if (s) s.title = `#${i} ${JSON.stringify(tokens[i])} · ${fmt(values[i])}`;
    }
    hi.textContent = `+${fmt(scale)}`;
    caption.textContent = vmax > 0
      ? `${name(hook, feature)} · max ${fmt(values[best])} at #${best} ${JSON.stringify(tokens[best])}`
      : `${name(hook, feature)} · silent on this prompt`;
    root.dataset.dictionary = hook;
    root.dataset.feature = String(feature);
    root.dataset.vmax = String(vmax);
    dictSel.value = hook;
    featIn.max = String((byHook.get(hook)?.d_sae ?? 1) - 1);
    if (document.activeElement !== featIn) featIn.value = String(feature);
  };

  const drawLists = async () => {
    const s = await sparseOf(hook);
    const t = activeToken();
    strip.mark(t, "cb-token-active");
    topList.replaceChildren();
    if (t === null || t < 0 || t >= tokens.length) {
      topTitle.textContent = "Hover a token to list the features that fire most there; click to lock.";
      delete root.dataset.token;
    } else {
      const top = topAt(s, t, nTop);
      topTitle.textContent = `Top features at #${t} ${JSON.stringify(tokens[t])}${link.get("token") === t ? " · locked" : ""}${top.features.length ? "" : ": none fire"}`;
      top.features.forEach((f, r) => row(topList, f, top.values[r], top.values[0]));
      root.dataset.token = String(t);
    }
    const hits = searchFeatures(s, byHook.get(hook)?.labels ?? {}, byHook.get(hook)?.d_sae ?? 0, search.value, here.checked ? t : null);
    found.replaceChildren();
    const shown = hits.slice(0, 50);
    shown.forEach((x) => row(found, x.feature, x.max, shown[0]?.max ?? 1));
    found.dataset.count = String(hits.length);
  };

  let want = "";
  const show = async () => {
    const d = link.get("dictionary");
    const f = link.get("feature");
    if (typeof d === "string" && byHook.has(d) && typeof f === "number") {
      hook = d;
      feature = f;
    } else if (f === null || f === undefined) {
      // a layer chosen elsewhere (a head, a neuron) opens this layer's dictionary, if any
      const layer = link.get("layer");
      const same = dicts.find((x) => x.layer === layer && x.hook !== hook);
      if (same) hook = same.hook;
    }
    const key = `${hook}:${feature}`;
    want = key;
    root.dataset.loading = "true";
    try {
      const s = await sparseOf(hook);
      if (want !== key) return;
      values = featureColumn(s, feature);
      status.textContent = "";
      root.classList.remove("cb-failed");
    } catch (err) {
      if (want !== key) return;
      status.textContent = String((err as Error).message ?? err).replace(/^\[circuitboard\] /, "");
      root.classList.add("cb-failed");
    } finally {
      if (want === key) delete root.dataset.loading;
    }
    drawColumn();
    await drawLists();
  };

  const pick = (f: number) => {
    const d = byHook.get(hook);
    select(link, { layer: d ? d.layer : null, dictionary: hook, feature: f });
  };
  dictSel.addEventListener("change", async () => {
    const h = dictSel.value;
    const s = await sparseOf(h);
    const strongest = activeFeatures(s)[0]?.feature ?? 0;
    hook = h;
    pick(strongest);
  }, { signal });
  featIn.addEventListener("change", () => {
    const f = Math.round(Number(featIn.value));
    const d = byHook.get(hook);
    if (Number.isFinite(f) && d && f >= 0 && f < d.d_sae) pick(f);
  }, { signal });
  for (const list of [topList, found]) {
    list.addEventListener("click", (ev) => {
      const b = (ev.target as HTMLElement | null)?.closest?.(".cb-feature-pick") as HTMLElement | null;
      if (b) pick(Number(b.dataset.feature));
    }, { signal });
  }
  search.addEventListener("input", () => void drawLists(), { signal });
  here.addEventListener("change", () => void drawLists(), { signal });
  root.tabIndex = 0;
  root.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && ev.target !== search) select(link, { token: null });
  }, { signal });

  const offSel = onSelection(link, ["dictionary", "feature", "layer"], () => void show());
  const offTok = onSelection(link, ["token", "hover_token"], () => void drawLists());
  const offTheme = followTheme(model as AnyModel, root, drawColumn);
  figureHooks(root, { title: () => `Features · ${name(hook, feature)}` });
  await show();
  root.dataset.ready = "true";

  return () => {
    abort.abort();
    offSel();
    offTok();
    offTheme();
    fetcher.dispose();
    root.remove();
  };
}
