// Neurons view: a prompt's tokens coloured by the selected MLP neuron, and per token the
// neurons that fire most there (click one to select it). Data comes one column at a time.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
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
  const lo = el("span", "cb-legend-label", legend);
  const bar = el("span", "cb-legend-bar", legend);
  const hi = el("span", "cb-legend-label", legend);
  const status = el("span", "cb-status", header);

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
      const { reply } = await fetcher.get({ kind: "fetch-top-neurons", prompt: p, layer, token: i });
      if (listKey !== key) return;
      const ids = reply.neurons as number[];
      const vals = reply.values as number[];
      const top = Math.max(Math.abs(vals[0] ?? 0), 1e-9);
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
        fill.style.width = `${Math.max(0, (100 * vals[r]) / top)}%`;
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
    const layer = link.get("layer");
    const neuron = link.get("neuron");
    const lay = layer !== null && layers.includes(layer) ? layer : current.layer;
    const neu = neuron !== null && neuron >= 0 && neuron < dMlp ? neuron : current.neuron;
    if (layer !== null && !layers.includes(layer)) status.textContent = `layer ${layer} not captured`;
    const key = `${p}:${lay}:${neu}`;
    want = key;
    if (current.prompt === p && current.layer === lay && current.neuron === neu) {
      if (!(layer !== null && !layers.includes(layer))) status.textContent = "";
      drawColumn();
      void drawList();
      return;
    }
    status.textContent = "loading…";
    root.dataset.loading = "true";
    try {
      const { reply, buffers } = await fetcher.get({ kind: "fetch-neuron", prompt: p, layer: lay, neuron: neu });
      if (want !== key) return;
      current = { prompt: p, layer: lay, neuron: neu, values: decode(reply.values as Encoded, buffers).data, vmax: reply.vmax as number };
      status.textContent = "";
      root.classList.remove("cb-failed");
    } catch (err) {
      if (want !== key) return;
      const fallback = lay !== current.layer ? await strongestIn(p, lay) : null;
      if (want !== key) return;
      if (fallback) {
        current = fallback;
        status.textContent = `neuron ${neu} of layer ${lay} is not in this page; showing the layer's strongest neuron here`;
        root.classList.remove("cb-failed");
      } else {
        status.textContent = String((err as Error).message ?? err);
        root.classList.add("cb-failed");
      }
    } finally {
      if (want === key) delete root.dataset.loading;
    }
    drawColumn();
    void drawList();
  };

  // A layer change (say, a head clicked in another view) can ask for a neuron a report did not
  // keep; its per-token top lists are always kept, so show that layer's strongest neuron instead.
  const strongestIn = async (p: number, layer: number): Promise<Column | null> => {
    const tok = link.get("token") ?? link.get("hover_token") ?? prompts[p].length - 1;
    try {
      const top = await fetcher.get({ kind: "fetch-top-neurons", prompt: p, layer, token: tok });
      const first = (top.reply.neurons as number[] | undefined)?.[0];
      if (first === undefined) return null;
      const { reply, buffers } = await fetcher.get({ kind: "fetch-neuron", prompt: p, layer, neuron: first });
      return { prompt: p, layer, neuron: first, values: decode(reply.values as Encoded, buffers).data, vmax: reply.vmax as number };
    } catch {
      return null;
    }
  };

  layerSel.addEventListener("change", () => select(link, { layer: Number(layerSel.value) }), { signal });
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
