// Neurons view: a prompt's tokens coloured by the selected MLP neuron, and per token the
// neurons that fire most there (click one to select it). Data comes one column at a time.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode, uint8View } from "../codec";
import { figureHooks } from "../figure";
import { cssColor, diverging, type Lut } from "../colormaps";
import { Fetcher } from "../fetch";
import { hover, onSelection, resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import { type ImageInfo, type PatchGrid, tokenStrip } from "../patches";
import type { TokenStrip } from "../tokens";
import type { Encoded } from "../types";
import { el } from "../dom";

interface NeuronsState {
  prompts: string[][];
  labels: string[];
  layer_indices: number[];
  d_mlp: number;
  n_top: number;
  _initial: { prompt: number; layer: number; neuron: number; values: Encoded; vmax: number };
  images: (ImageInfo | null)[]; // per prompt: an image capture's patch grid (empty for text)
  theme: string;
  link: string;
}

interface Column {
  prompt: number;
  layer: number;
  neuron: number;
  values: Float32Array;
  vmax: number;
}

/** A whole layer of one prompt, as a report stores it: 8-bit codes per neuron. */
interface Block {
  codes: Uint8Array; // [d_mlp, pos], neuron-major
  lo: Float32Array;
  scale: Float32Array;
  vmax: Float32Array;
  n: number; // positions
}

/** Neuron `i`'s activations from a block (code 255: NaN / ±inf). */
export function blockColumn(b: Block, i: number): Float32Array {
  const out = new Float32Array(b.n);
  const sc = b.scale[i];
  const zero = Math.round(-b.lo[i] / sc); // the code of 0: zero decodes exactly
  for (let t = 0; t < b.n; t++) {
    const c = b.codes[i * b.n + t];
    out[t] = c === 255 ? Number.NaN : (c - zero) * sc;
  }
  return out;
}

/** The `k` neurons of a block with the largest activation at token `t`. */
export function blockTop(b: Block, t: number, k: number): { neurons: number[]; values: number[] } {
  const d = b.lo.length;
  const vals = new Float32Array(d);
  for (let i = 0; i < d; i++) {
    const c = b.codes[i * b.n + t];
    vals[i] = c === 255 ? Number.NEGATIVE_INFINITY : (c - Math.round(-b.lo[i] / b.scale[i])) * b.scale[i];
  }
  const idx = Array.from({ length: d }, (_, i) => i).sort((x, y) => vals[y] - vals[x] || x - y).slice(0, k);
  return { neurons: idx, values: idx.map((i) => vals[i]) };
}

const fmt = (v: number | null) =>
  v === null ? "NaN/∞" : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2); // null: JSON's NaN / inf

let darkLut: Lut | null = null;

/** The diverging map for activations: RdBu on light; on dark, the page background at zero
 * fading to bright blue (positive) / red (negative), so inactive tokens do not glare. */
export function activationLut(dark: boolean): Lut {
  if (!dark) return diverging();
  if (!darkLut) {
    const bg = [13, 17, 23];
    const pos = [88, 166, 255];
    const neg = [255, 110, 100];
    darkLut = new Uint8ClampedArray(256 * 4);
    for (let i = 0; i < 256; i++) {
      const t = i / 255;
      const w = Math.min(1, Math.abs(t - 0.5) * 2) ** 0.8;
      const end = t >= 0.5 ? pos : neg;
      darkLut.set([0, 1, 2].map((c) => bg[c] + w * (end[c] - bg[c])).concat(255), 4 * i);
    }
  }
  return darkLut;
}

/** Activation → [0, 1] on the diverging map, 0.5 at zero, ±vmax at the ends. */
export function unitOf(v: number, vmax: number): number {
  return Math.max(0, Math.min(1, 0.5 + (0.5 * v) / (vmax > 0 ? vmax : 1)));
}

export async function render(props: RenderProps<NeuronsState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const prompts = model.get("prompts");
  const labels = model.get("labels");
  const layers = model.get("layer_indices");
  const dMlp = model.get("d_mlp");

  // Live, the kernel answers one neuron at a time; a report may instead hold a whole layer as
  // 8-bit codes (then columns and per-token lists are read from it).
  const notIncluded = (err: unknown) => /not included in the report/.test(String((err as Error)?.message ?? err));
  const blockOf = async (p: number, layer: number): Promise<Block> => {
    const { reply, buffers } = await fetcher.get({ kind: "fetch-neuron-layer", prompt: p, layer });
    const enc = reply.codes as Encoded;
    return {
      codes: uint8View(enc, buffers),
      lo: decode(reply.lo as Encoded, buffers).data,
      scale: decode(reply.scale as Encoded, buffers).data,
      vmax: decode(reply.vmax as Encoded, buffers).data,
      n: enc.shape[1],
    };
  };
  const columnOf = async (p: number, layer: number, neuron: number): Promise<Column> => {
    try {
      const { reply, buffers } = await fetcher.get({ kind: "fetch-neuron", prompt: p, layer, neuron });
      return { prompt: p, layer, neuron, values: decode(reply.values as Encoded, buffers).data, vmax: reply.vmax as number };
    } catch (err) {
      if (!notIncluded(err)) throw err;
      let b: Block;
      try {
        b = await blockOf(p, layer);
      } catch (e2) {
        if (!notIncluded(e2)) throw e2;
        throw new Error(`L${layer} N${neuron} is not in this report: layer ${layer}${prompts.length > 1 ? ` of prompt ${p + 1}` : ""} did not fit its size budget (the notes at the top of the page list what was left out).`);
      }
      return { prompt: p, layer, neuron, values: blockColumn(b, neuron), vmax: b.vmax[neuron] };
    }
  };
  const topOf = async (p: number, layer: number, token: number): Promise<{ neurons: number[]; values: number[] }> => {
    try {
      const { reply } = await fetcher.get({ kind: "fetch-top-neurons", prompt: p, layer, token });
      return { neurons: reply.neurons as number[], values: reply.values as number[] };
    } catch (err) {
      if (!notIncluded(err)) throw err;
      try {
        return blockTop(await blockOf(p, layer), token, model.get("n_top"));
      } catch (e2) {
        if (!notIncluded(e2)) throw e2;
        throw new Error(`Layer ${layer}'s neurons at this token are not in this report (size budget; see the notes at the top of the page).`);
      }
    }
  };

  const root = el("div", "cb-root cb-neurons", host);
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Neurons";
  const pager = el("span", "cb-pager", header);
  const prev = el("button", "cb-button", pager);
  prev.textContent = "‹";
  prev.setAttribute("aria-label", "previous prompt");
  const pageLabel = el("span", "cb-page", pager);
  const next = el("button", "cb-button", pager);
  next.textContent = "›";
  next.setAttribute("aria-label", "next prompt");
  pager.hidden = prompts.length < 2;
  const layerSel = el("select", "cb-select", header);
  layerSel.setAttribute("aria-label", "layer");
  for (const l of layers) layerSel.add(new Option(`Layer ${l}`, String(l)));
  const neuronLabel = el("label", "cb-field", header);
  neuronLabel.textContent = "Neuron ";
  const neuronIn = el("input", "cb-input", neuronLabel);
  neuronIn.type = "number";
  neuronIn.min = "0";
  neuronIn.max = String(dMlp - 1);
  neuronIn.setAttribute("aria-label", "neuron");
  const legend = el("span", "cb-legend", header);
  el("span", "cb-legend-label", legend).textContent = "activation";
  const lo = el("span", "cb-legend-label", legend);
  const bar = el("span", "cb-legend-bar", legend);
  const hi = el("span", "cb-legend-label", legend);
  const status = el("span", "cb-status", header);
  status.setAttribute("aria-live", "polite");

  const body = el("div", "cb-body", root);
  const main = el("div", "cb-neurons-main", body);
  const caption = el("div", "cb-caption", main);
  const stripBox = el("div", "cb-neurons-strip", main);
  const side = el("div", "cb-neurons-side", body);
  const sideTitle = el("div", "cb-caption", side);
  const list = el("ol", "cb-neuron-list", side);

  let lut = diverging();

  const init = model.get("_initial");
  let current: Column = {
    prompt: init.prompt,
    layer: init.layer,
    neuron: init.neuron,
    values: decode(init.values).data,
    vmax: init.vmax,
  };
  let stripAbort = new AbortController();
  let strip: TokenStrip | PatchGrid | null = null;
  let stripPrompt = -1;
  let listKey = "";

  const promptOf = () => {
    const p = link.get("prompt") ?? 0;
    return p >= 0 && p < prompts.length ? p : 0;
  };
  const activeToken = (): number | null => link.get("token") ?? link.get("hover_token") ?? null;

  const buildStrip = (p: number) => {
    if (stripPrompt === p && strip) return;
    stripAbort.abort();
    stripAbort = new AbortController();
    stripBox.replaceChildren();
    const images = model.get("images") ?? [];
    strip = tokenStrip(prompts[p], images[p], {
      hover: (i) => hover(link, { hover_token: i }),
      click: (i) => select(link, { token: link.get("token") === i ? null : i }),
    }, stripAbort.signal);
    stripBox.appendChild(strip.el);
    stripPrompt = p;
    pageLabel.textContent = `${labels[p] ?? `prompt ${p + 1}`} · ${p + 1}/${prompts.length}`;
    prev.disabled = p === 0;
    next.disabled = p === prompts.length - 1;
  };

  const drawColumn = () => {
    if (!strip) return;
    const c = current;
    lut = activationLut(isDark(root));
    bar.style.background = `linear-gradient(to right, ${[0, 0.25, 0.5, 0.75, 1].map((t) => cssColor(lut, t)).join(", ")})`;
    strip.color(c.values, lut, (v) => unitOf(v, c.vmax));
    const toks = prompts[c.prompt];
    let best = 0;
    for (let i = 0; i < c.values.length; i++) {
      const s = strip.span(i);
      if (s) s.title = `#${i} ${JSON.stringify(toks[i])} · ${fmt(c.values[i])}`;
      if (c.values[i] > c.values[best]) best = i;
    }
    lo.textContent = fmt(-c.vmax);
    hi.textContent = `+${fmt(c.vmax)}`;
    caption.textContent = `L${c.layer} N${c.neuron} · max ${fmt(c.values[best])} at #${best} ${JSON.stringify(toks[best])}`;
    root.dataset.prompt = String(c.prompt);
    root.dataset.layer = String(c.layer);
    root.dataset.neuron = String(c.neuron);
    root.dataset.vmax = String(c.vmax);
    layerSel.value = String(c.layer);
    if (document.activeElement !== neuronIn) neuronIn.value = String(c.neuron);
  };

  const drawList = async () => {
    const p = promptOf();
    const layer = current.layer;
    const i = activeToken();
    strip?.mark(i, "cb-token-active");
    sideTitle.classList.toggle("cb-help", i === null || i < 0 || i >= prompts[p].length);
    if (i === null || i < 0 || i >= prompts[p].length) {
      sideTitle.textContent = "Hover a token to list the neurons that fire most there; click to lock.";
      list.replaceChildren();
      listKey = "";
      delete root.dataset.token;
      return;
    }
    const key = `${p}:${layer}:${i}`;
    if (key === listKey) {
      markSelected();
      return;
    }
    listKey = key;
    try {
      const top = await topOf(p, layer, i);
      if (listKey !== key) return;
      const ids = top.neurons;
      const vals = top.values;
      const biggest = Math.max(Math.abs(vals[0] ?? 0), 1e-9);
      sideTitle.textContent = `Top neurons of layer ${layer} at #${i} ${JSON.stringify(prompts[p][i])}${link.get("token") === i ? " · locked" : ""}`;
      const frag = document.createDocumentFragment();
      ids.forEach((n, r) => {
        const li = el("li", "cb-neuron-row");
        const btn = el("button", "cb-neuron-pick", li);
        btn.dataset.neuron = String(n);
        btn.dataset.layer = String(layer);
        btn.textContent = `N${n}`;
        btn.title = `select layer ${layer} neuron ${n}`;
        const barBox = el("span", "cb-neuron-bar", li);
        const fill = el("span", "cb-neuron-fill", barBox);
        fill.style.width = `${Math.max(0, (100 * vals[r]) / biggest)}%`;
        el("span", "cb-neuron-value", li).textContent = fmt(vals[r]);
        frag.appendChild(li);
      });
      list.replaceChildren(frag);
      root.dataset.token = String(i);
      markSelected();
    } catch (err) {
      if (listKey !== key) return;
      listKey = "";
      list.replaceChildren();
      sideTitle.textContent = String((err as Error).message ?? err);
    }
  };

  const markSelected = () => {
    for (const b of list.querySelectorAll<HTMLElement>(".cb-neuron-pick")) {
      b.classList.toggle("cb-selected", Number(b.dataset.neuron) === current.neuron);
    }
  };

  let want = "";
  const show = async () => {
    const p = promptOf();
    buildStrip(p);
    // Follows neuron selections only: a layer chosen with a head (or alone) leaves the
    // neuron shown as it is, never the same index in another layer.
    const layer = link.get("layer");
    const neuron = link.get("neuron");
    const chosen = layer !== null && layer !== undefined && neuron !== null && neuron !== undefined;
    if (chosen && !layers.includes(layer)) {
      status.textContent = `layer ${layer} was not captured for this view; still showing L${current.layer} N${current.neuron}`;
      return;
    }
    const lay = chosen ? layer : current.layer;
    const neu = chosen && neuron >= 0 && neuron < dMlp ? neuron : current.neuron;
    const key = `${p}:${lay}:${neu}`;
    want = key;
    if (current.prompt === p && current.layer === lay && current.neuron === neu) {
      status.textContent = "";
      root.classList.remove("cb-failed");
      drawColumn();
      void drawList();
      return;
    }
    status.textContent = "loading…";
    root.dataset.loading = "true";
    try {
      const col = await columnOf(p, lay, neu);
      if (want !== key) return;
      current = col;
      status.textContent = "";
      root.classList.remove("cb-failed");
    } catch (err) {
      if (want !== key) return;
      // The drawing, caption and selectors keep showing `current`; the status says why.
      const msg = String((err as Error).message ?? err).replace(/^\[circuitboard\] /, "");
      status.textContent = `${msg} Still showing L${current.layer} N${current.neuron}.`;
      root.classList.add("cb-failed");
    } finally {
      if (want === key) delete root.dataset.loading;
    }
    drawColumn();
    void drawList();
  };

  // A layer from the menu opens its strongest neuron on this prompt (not the same index).
  layerSel.addEventListener("change", async () => {
    const layer = Number(layerSel.value);
    try {
      const { reply } = await fetcher.get({ kind: "fetch-strongest", prompt: promptOf(), layer });
      select(link, { layer, neuron: reply.neuron as number });
    } catch (err) {
      layerSel.value = String(current.layer);
      status.textContent = `${String((err as Error).message ?? err).replace(/^\[circuitboard\] /, "")} Still showing L${current.layer} N${current.neuron}.`;
    }
  }, { signal });
  neuronIn.addEventListener("change", () => {
    const n = Math.round(Number(neuronIn.value));
    if (Number.isFinite(n) && n >= 0 && n < dMlp) select(link, { neuron: n, layer: current.layer });
  }, { signal });
  prev.addEventListener("click", () => select(link, { prompt: Math.max(0, promptOf() - 1), token: null }), { signal });
  next.addEventListener("click", () => select(link, { prompt: Math.min(prompts.length - 1, promptOf() + 1), token: null }), { signal });
  list.addEventListener("click", (ev) => {
    const b = (ev.target as HTMLElement | null)?.closest?.(".cb-neuron-pick") as HTMLElement | null;
    if (b) select(link, { layer: Number(b.dataset.layer), neuron: Number(b.dataset.neuron) });
  }, { signal });
  root.tabIndex = 0;
  root.addEventListener("keydown", (ev) => {
    if (ev.target === neuronIn) return;
    if (ev.key === "Escape") select(link, { token: null });
    else if (ev.key === "ArrowRight" && prompts.length > 1) next.click();
    else if (ev.key === "ArrowLeft" && prompts.length > 1) prev.click();
  }, { signal });

  const offSel = onSelection(link, ["layer", "neuron", "prompt"], () => void show());
  const offTok = onSelection(link, ["token", "hover_token"], () => void drawList());
  const offTheme = followTheme(model as AnyModel, root, drawColumn);
  figureHooks(root, {
    title: () => `Neurons · layer ${current.layer}, neuron ${current.neuron}${prompts.length > 1 ? ` · ${labels[current.prompt] ?? `prompt ${current.prompt + 1}`}` : ""}`,
  });
  buildStrip(current.prompt);
  drawColumn();
  await show();
  root.dataset.ready = "true";

  return () => {
    abort.abort();
    stripAbort.abort();
    offSel();
    offTok();
    offTheme();
    fetcher.dispose();
    root.remove();
  };
}
