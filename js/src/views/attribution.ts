// Logit attribution view: layers × heads heatmap (diverging, centred at 0), per-layer
// attention / MLP bars, the other terms and the top neurons. Click a head to select it.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { cssColor, diverging, type Lut } from "../colormaps";
import { Fetcher } from "../fetch";
import { cellAt, paintMatrix } from "../heatmap";
import { onSelection, resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import type { Encoded } from "../types";
import { el } from "../dom";
import { figureHooks } from "../figure";

/** [hook the dictionary reads, layer, feature, direct contribution, label ("" if none)] */
type FeatureRow = [string, number, number, number, string];

interface AttributionState {
  description: string;
  n_layers: number;
  n_heads: number;
  model_value: number;
  total: number;
  tokens: string[];
  _heads: Encoded;
  _layers: Encoded;
  _terms: [string, number][];
  _top_neurons: [number, number, number][];
  _top_features: FeatureRow[];
  pos: number;
  positions: number[];
  theme: string;
  link: string;
}

export function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  const s = a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 0.01 || a === 0 ? v.toFixed(2) : v.toExponential(1);
  return v > 0 ? `+${s}` : s.replace("-", "−");
}

/** Symmetric range for a diverging map: the largest |value| (1 if all zero). */
export function symmetricMax(values: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) if (Number.isFinite(values[i])) m = Math.max(m, Math.abs(values[i]));
  return m > 0 ? m : 1;
}

/** Cell size in CSS pixels so the heatmap stays compact for 2 or 80 layers. */
export function cellSize(nLayers: number, nHeads: number): { w: number; h: number } {
  const h = Math.max(6, Math.min(18, Math.floor(480 / Math.max(nLayers, 1))));
  const w = Math.max(8, Math.min(28, Math.floor(300 / Math.max(nHeads, 1))));
  return { w, h };
}

let darkLut: Lut | null = null;

/** Diverging map for this view: RdBu on light; red → background → blue on dark, so that
 * zero recedes into the page instead of glaring white. */
export function divergingFor(dark: boolean): Lut {
  if (!dark) return diverging();
  if (darkLut) return darkLut;
  const neg = [239, 98, 92];
  const mid = [22, 27, 34];
  const pos = [88, 166, 255];
  const lut = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    const [a, b, f] = t < 0.5 ? [neg, mid, t / 0.5] : [mid, pos, (t - 0.5) / 0.5];
    for (let c = 0; c < 3; c++) lut[4 * i + c] = Math.round(a[c] + (b[c] - a[c]) * f);
    lut[4 * i + 3] = 255;
  }
  darkLut = lut;
  return lut;
}

export async function render(props: RenderProps<AttributionState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const L = model.get("n_layers");
  const H = model.get("n_heads");
  const positions = new Set(model.get("positions"));
  const initialPos = model.get("pos");
  // The position shown: the initial one from traits, others fetched when a token is selected.
  type Neuron = [number, number, number];
  interface Shown {
    pos: number;
    description: string;
    model_value: number;
    total: number;
    heads: Float32Array; // [L, H]
    attn: Float32Array; // [L]
    mlp: Float32Array; // [L]
    layerVals: Float32Array; // [2, L]
    terms: [string, number][];
    top: Neuron[];
    layerTop: Neuron[][] | null; // per-layer top neurons (else fetch-neurons)
    features: FeatureRow[]; // top dictionary features (saes=), [] without
    headMax: number;
    barMax: number;
  }
  const shownFrom = (f: Record<string, unknown>, buffers: DataView[] = []): Shown => {
    const heads = decode(f.heads as Encoded, buffers).data;
    const layerVals = decode(f.layers as Encoded, buffers).data;
    return {
      pos: f.pos as number,
      description: f.description as string,
      model_value: f.model_value as number,
      total: f.total as number,
      heads,
      attn: layerVals.subarray(0, L),
      mlp: layerVals.subarray(L, 2 * L),
      layerVals,
      terms: f.terms as [string, number][],
      top: f.top_neurons as Neuron[],
      layerTop: (f.layer_top as Neuron[][] | undefined) ?? null,
      features: (f.top_features as FeatureRow[] | undefined) ?? [],
      headMax: symmetricMax(heads),
      barMax: symmetricMax(layerVals),
    };
  };
  const initial = shownFrom({
    pos: initialPos,
    description: model.get("description"),
    model_value: model.get("model_value"),
    total: model.get("total"),
    heads: model.get("_heads"),
    layers: model.get("_layers"),
    terms: model.get("_terms"),
    top_neurons: model.get("_top_neurons"),
    top_features: model.get("_top_features") ?? [],
  });
  let cur = initial;
  const { w: cw, h: ch } = cellSize(L, H);
  const BAR_W = 72;

  const root = el("div", "cb-root cb-dla", host);
  root.tabIndex = 0;
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Logit attribution";
  const desc = el("span", "cb-dla-desc", header);
  const sums = el("span", "cb-status", header);

  const body = el("div", "cb-body", root);
  const figure = el("div", "cb-figure cb-dla-figure", body);
  // Column headers.
  const grid = el("div", "cb-dla-grid", figure);
  grid.style.gridTemplateColumns = `auto ${H * cw}px ${BAR_W}px ${BAR_W}px`;
  el("div", "cb-dla-corner", grid).textContent = "layer";
  const headAxis = el("div", "cb-dla-haxis", grid);
  for (let h = 0; h < H; h++) {
    const s = el("span", "", headAxis);
    s.style.width = `${cw}px`;
    s.textContent = H <= 16 || h % 4 === 0 ? String(h) : "";
  }
  el("div", "cb-dla-colhead", grid).textContent = "attn";
  el("div", "cb-dla-colhead", grid).textContent = "MLP";
  // Layer axis.
  const layerAxis = el("div", "cb-dla-laxis", grid);
  const step = ch >= 12 ? 1 : ch >= 8 ? 2 : 5;
  for (let l = 0; l < L; l++) {
    const s = el("div", "", layerAxis);
    s.style.height = `${ch}px`;
    s.style.lineHeight = `${ch}px`;
    s.textContent = l % step === 0 ? String(l) : "";
  }
  // The heatmap, one canvas pixel per head, scaled by CSS.
  const heatWrap = el("div", "cb-dla-heatwrap", grid);
  const heat = el("canvas", "cb-dla-heat", heatWrap);
  heat.style.width = `${H * cw}px`;
  heat.style.height = `${L * ch}px`;
  heat.setAttribute("role", "img");
  heat.setAttribute("aria-label", `direct logit attribution of ${L} layers × ${H} heads`);
  const marker = el("div", "cb-dla-marker", heatWrap);
  marker.hidden = true;
  const bars: HTMLCanvasElement[] = [];
  for (const which of ["attn", "mlp"]) {
    const c = el("canvas", "cb-dla-bars", grid);
    c.dataset.which = which;
    c.style.width = `${BAR_W}px`;
    c.style.height = `${L * ch}px`;
    c.setAttribute("role", "img");
    c.setAttribute("aria-label", `${which} contribution per layer`);
    bars.push(c);
  }
  // Colour bar.
  const legend = el("div", "cb-dla-legend", figure);
  el("span", "", legend).textContent = "direct effect on the logit (difference)";
  const legendLo = el("span", "", legend);
  const ramp = el("canvas", "cb-dla-ramp", legend);
  const legendHi = el("span", "", legend);
  const tip = el("div", "cb-tip cb-dla-tip", figure);
  tip.hidden = true;

  const side = el("div", "cb-side cb-dla-side", body);
  const readout = el("div", "cb-dla-readout cb-help", side);
  const READOUT = "Hover a head or a bar; click a head to open it in linked views.";
  readout.textContent = READOUT;
  el("div", "cb-dla-h", side).textContent = "Other terms";
  const termsBox = el("div", "cb-dla-list", side);
  const neuronHead = el("div", "cb-dla-h", side);
  const neuronTitle = el("span", "", neuronHead);
  const scopeSel = el("select", "cb-select cb-dla-scope", neuronHead);
  scopeSel.setAttribute("aria-label", "neuron scope");
  scopeSel.add(new Option("all layers", "all"));
  scopeSel.add(new Option("selected layer", "layer"));
  const neuronBox = el("div", "cb-dla-list", side);
  const hasFeatures = (model.get("_top_features") ?? []).length > 0;
  const featureHead = el("div", "cb-dla-h", side);
  featureHead.textContent = "Top features";
  const featureBox = el("div", "cb-dla-list cb-dla-features", side);
  featureHead.hidden = featureBox.hidden = !hasFeatures;

  const listRow = (box: HTMLElement, label: string, value: number, max: number, onClick?: () => void) => {
    const row = el("div", "cb-dla-row", box);
    el("span", "cb-dla-label", row).textContent = label;
    const track = el("span", "cb-dla-track", row);
    const bar = el("span", "cb-dla-fill", track);
    const frac = Math.min(1, Math.abs(value) / max);
    bar.style.width = `${50 * frac}%`;
    bar.style.left = value >= 0 ? "50%" : `${50 - 50 * frac}%`;
    bar.classList.add(value >= 0 ? "cb-pos" : "cb-neg");
    el("span", "cb-dla-value", row).textContent = fmt(value);
    if (onClick) {
      row.classList.add("cb-clickable");
      row.addEventListener("click", onClick, { signal });
    }
    return row;
  };

  const drawText = () => {
    desc.textContent = cur.description;
    const follow = positions.size > 0 && cur.pos !== initialPos ? " · following the selected token" : "";
    const differ = fmt(cur.model_value) !== fmt(cur.total);
    // Exact as claimed: when the shown digits differ, say why (a half-precision capture).
    sums.textContent = `model ${fmt(cur.model_value)} · sum of parts ${fmt(cur.total)}${differ ? ` (differ by ${Math.abs(cur.model_value - cur.total).toExponential(1)}: capture in float32 for exact sums)` : ""}${follow}`;
    sums.classList.toggle("cb-error", differ);
    legendLo.textContent = fmt(-cur.headMax);
    legendHi.textContent = fmt(cur.headMax);
    termsBox.replaceChildren();
    const termMax = symmetricMax(cur.terms.map((t) => t[1]).concat(Array.from(cur.layerVals)));
    for (const [label, value] of cur.terms) listRow(termsBox, label, value, termMax);
    root.dataset.pos = String(cur.pos);
  };

  let neuronLayer: number | null = null;
  const showNeurons = async () => {
    const scope = scopeSel.value;
    const layer = link.get("layer");
    let top: [number, number, number][];
    if (scope === "layer" && layer !== null && layer !== undefined && layer >= 0 && layer < L) {
      neuronTitle.textContent = `Top neurons in L${layer}`;
      if (cur.layerTop) {
        top = cur.layerTop[layer];
      } else {
        try {
          const { reply } = await fetcher.get({ kind: "fetch-neurons", layer });
          top = reply.top as [number, number, number][];
        } catch (err) {
          neuronBox.textContent = String((err as Error).message ?? err);
          return;
        }
      }
      neuronLayer = layer;
    } else {
      neuronTitle.textContent = "Top neurons";
      top = cur.top;
      neuronLayer = null;
    }
    root.dataset.neuronScope = neuronLayer === null ? "all" : String(neuronLayer);
    neuronBox.replaceChildren();
    const max = symmetricMax(top.map((t) => t[2]));
    for (const [l, n, v] of top) {
      const row = listRow(neuronBox, `L${l} N${n}`, v, max, () => select(link, { layer: l, neuron: n }));
      row.dataset.layer = String(l);
      row.dataset.neuron = String(n);
      if (link.get("neuron") === n && link.get("layer") === l) row.classList.add("cb-dla-row-active");
    }
  };

  const showFeatures = () => {
    if (!hasFeatures) return;
    featureBox.replaceChildren();
    const max = symmetricMax(cur.features.map((t) => t[3]));
    for (const [hook, l, f, v, lab] of cur.features) {
      const row = listRow(featureBox, `L${l} F${f}`, v, max, () => select(link, { layer: l, dictionary: hook, feature: f }));
      if (lab) {
        // a label is text, never markup
        el("span", "cb-dla-fname", row.firstElementChild as HTMLElement).textContent = ` ${lab}`;
        row.title = `L${l} F${f} ${lab} (${hook})`;
      } else row.title = `L${l} F${f} (${hook})`;
      row.dataset.layer = String(l);
      row.dataset.dictionary = hook;
      row.dataset.feature = String(f);
      if (link.get("dictionary") === hook && link.get("feature") === f) row.classList.add("cb-dla-row-active");
    }
    if (!cur.features.length) featureBox.textContent = "no feature contributes at this position";
  };

  const dpr = () => Math.max(1, Math.round(window.devicePixelRatio || 1));
  const css = (name: string) => getComputedStyle(root).getPropertyValue(name).trim() || "#888";

  const drawBars = () => {
    const lut: Lut = divergingFor(isDark(root));
    const sel = link.get("layer");
    const barMax = cur.barMax;
    bars.forEach((c, k) => {
      const vals = k === 0 ? cur.attn : cur.mlp;
      const r = dpr();
      c.width = BAR_W * r;
      c.height = L * ch * r;
      const ctx = c.getContext("2d");
      if (!ctx) return;
      ctx.scale(r, r);
      ctx.clearRect(0, 0, BAR_W, L * ch);
      const mid = BAR_W / 2;
      for (let l = 0; l < L; l++) {
        if (sel === l) {
          ctx.fillStyle = css("--cb-panel");
          ctx.fillRect(0, l * ch, BAR_W, ch);
        }
        const v = vals[l];
        const len = (Math.abs(v) / barMax) * (mid - 2);
        ctx.fillStyle = cssColor(lut, 0.5 + (0.5 * v) / barMax);
        const pad = ch > 8 ? 2 : 1;
        ctx.fillRect(v >= 0 ? mid : mid - len, l * ch + pad, len, ch - 2 * pad);
      }
      ctx.strokeStyle = css("--cb-border");
      ctx.beginPath();
      ctx.moveTo(mid + 0.5, 0);
      ctx.lineTo(mid + 0.5, L * ch);
      ctx.stroke();
    });
  };

  const drawHeat = () => {
    const lut = divergingFor(isDark(root));
    const headMax = cur.headMax;
    const unit = (v: number) => 0.5 + (0.5 * v) / headMax;
    paintMatrix(heat, L, H, cur.heads, lut, unit);
    paintMatrix(ramp, 1, 64, Array.from({ length: 64 }, (_, i) => -headMax + (2 * headMax * i) / 63), lut, unit);
  };

  const drawSelection = () => {
    const l = link.get("layer");
    const h = link.get("head");
    const ok = l !== null && l !== undefined && h !== null && h !== undefined && l >= 0 && l < L && h >= 0 && h < H;
    marker.hidden = !ok;
    if (ok) {
      marker.style.left = `${h * cw}px`;
      marker.style.top = `${l * ch}px`;
      marker.style.width = `${cw}px`;
      marker.style.height = `${ch}px`;
      root.dataset.layer = String(l);
      root.dataset.head = String(h);
    } else {
      delete root.dataset.head;
      if (l !== null && l !== undefined) root.dataset.layer = String(l);
    }
  };

  const show = (text: string, label: string, ev: PointerEvent) => {
    tip.hidden = false;
    tip.textContent = text;
    const fr = figure.getBoundingClientRect();
    tip.style.left = `${Math.max(0, ev.clientX - fr.left + 12)}px`;
    tip.style.top = `${ev.clientY - fr.top + 12}px`;
    root.dataset.hover = label;
    readout.textContent = text;
  };
  const hide = () => {
    tip.hidden = true;
    delete root.dataset.hover;
    readout.textContent = READOUT; // no stale value once the pointer has left
  };

  heat.addEventListener("pointermove", (ev) => {
    const cell = cellAt(heat, ev);
    if (!cell) return hide();
    const v = cur.heads[cell.row * H + cell.col];
    show(`L${cell.row}H${cell.col}: ${fmt(v)}`, `L${cell.row}H${cell.col}`, ev);
  }, { signal });
  heat.addEventListener("pointerleave", hide, { signal });
  heat.addEventListener("click", (ev) => {
    const cell = cellAt(heat, ev);
    if (cell) select(link, { layer: cell.row, head: cell.col });
  }, { signal });
  bars.forEach((c, k) => {
    const layerAt = (ev: PointerEvent | MouseEvent) => {
      const r = c.getBoundingClientRect();
      const l = Math.floor(((ev.clientY - r.top) / r.height) * L);
      return l >= 0 && l < L ? l : null;
    };
    c.addEventListener("pointermove", (ev) => {
      const l = layerAt(ev);
      if (l === null) return hide();
      const label = k === 0 ? `L${l} attention (all heads)` : `L${l}.mlp`;
      show(`${label}: ${fmt(k === 0 ? cur.attn[l] : cur.mlp[l])}`, k === 0 ? `L${l}.attn` : `L${l}.mlp`, ev);
    }, { signal });
    c.addEventListener("pointerleave", hide, { signal });
    c.addEventListener("click", (ev) => {
      const l = layerAt(ev);
      if (l === null) return;
      if (k === 1) scopeSel.value = "layer";
      select(link, { layer: l });
    }, { signal });
  });
  scopeSel.addEventListener("change", () => void showNeurons(), { signal });
  root.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") select(link, { head: null });
  }, { signal });

  const offSel = onSelection(link, ["layer", "head"], () => {
    drawSelection();
    drawBars();
    if (scopeSel.value === "layer" && link.get("layer") !== neuronLayer) void showNeurons();
  });
  const offNeuron = onSelection(link, ["neuron"], () => void showNeurons());
  const offFeature = onSelection(link, ["dictionary", "feature"], showFeatures);
  // Follow the selected token: re-attribute at that position (fetched, cached).
  let wanted = initialPos;
  const followToken = async () => {
    const tok = link.get("token");
    const pos = tok !== null && tok !== undefined && positions.has(tok) ? tok : initialPos;
    wanted = pos;
    if (pos === cur.pos) return;
    let next = initial;
    if (pos !== initialPos) {
      try {
        const { reply, buffers } = await fetcher.get({ kind: "fetch-position", pos });
        next = shownFrom(reply, buffers);
      } catch (err) {
        sums.textContent = String((err as Error).message ?? err);
        return;
      }
    }
    if (wanted !== pos) return; // a later selection won
    cur = next;
    drawText();
    drawHeat();
    drawBars();
    showFeatures();
    await showNeurons();
  };
  const offToken = positions.size > 0 ? onSelection(link, ["token"], () => void followToken()) : () => undefined;
  figureHooks(root, {
    title: () => `Logit attribution · ${cur.description} · model ${fmt(cur.model_value)}, sum of parts ${fmt(cur.total)}`,
  });
  const offTheme = followTheme(model as AnyModel, root, () => {
    drawHeat();
    drawBars();
  });
  drawText();
  drawHeat();
  drawBars();
  drawSelection();
  showFeatures();
  await showNeurons();
  if (positions.size > 0) await followToken();
  root.dataset.ready = "true";

  return () => {
    abort.abort();
    offSel();
    offNeuron();
    offFeature();
    offToken();
    offTheme();
    fetcher.dispose();
    root.remove();
  };
}
