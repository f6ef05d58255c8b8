// Attention view: head picker, the selected head's pattern on canvas, the prompt as tokens.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { uint8View } from "../codec";
import { sequential } from "../colormaps";
import { Fetcher } from "../fetch";
import { cellAt, paintCodes } from "../heatmap";
import { hover, onSelection, resolveLink, select } from "../link";
import { followTheme, isDark } from "../theme";
import { TokenStrip } from "../tokens";
import type { Encoded } from "../types";

interface AttentionState {
  tokens: string[];
  layer_indices: number[];
  n_heads: number;
  _initial: { layer: number; head: number; pattern: Encoded };
  theme: string;
  link: string;
}

interface Head {
  layer: number; // model layer index
  head: number;
  codes: Uint8Array; // [query, key] uint8, value = lo + code * scale
  lo: number;
  scale: number;
  n: number;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls: string, parent?: HTMLElement): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  e.className = cls;
  parent?.appendChild(e);
  return e;
}

export async function render(props: RenderProps<AttentionState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const fetcher = new Fetcher(model as AnyModel);
  const tokens = model.get("tokens");
  const layers = model.get("layer_indices");
  const nHeads = model.get("n_heads");

  const root = el("div", "cb-root cb-attention", host);
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Attention";
  const layerSel = el("select", "cb-select", header);
  layerSel.setAttribute("aria-label", "layer");
  for (const l of layers) layerSel.add(new Option(`Layer ${l}`, String(l)));
  const headSel = el("select", "cb-select", header);
  headSel.setAttribute("aria-label", "head");
  for (let h = 0; h < nHeads; h++) headSel.add(new Option(`Head ${h}`, String(h)));
  const status = el("span", "cb-status", header);
  const body = el("div", "cb-body", root);
  const figure = el("div", "cb-figure", body);
  const canvas = el("canvas", "cb-heatmap", figure);
  canvas.setAttribute("role", "img");
  const tip = el("div", "cb-tip", figure);
  tip.hidden = true;
  const side = el("div", "cb-side", body);
  const caption = el("div", "cb-caption", side);

  let current: Head | null = null;
  const init = model.get("_initial");
  const initCodes = uint8View(init.pattern);
  current = { layer: layers[init.layer], head: init.head, codes: initCodes, lo: init.pattern.lo, scale: init.pattern.scale, n: init.pattern.shape[0] };

  const strip = new TokenStrip(tokens, {
    hover: (i) => hover(link, { hover_token: i }),
    click: (i) => select(link, { token: link.get("token") === i ? null : i }),
  }, signal);
  side.appendChild(strip.el);

  const activeToken = () => link.get("token") ?? link.get("hover_token");

  const drawHeat = () => {
    if (!current) return;
    paintCodes(canvas, current.n, current.n, current.codes, sequential(isDark(root)));
    canvas.setAttribute("aria-label", `attention pattern of layer ${current.layer} head ${current.head}`);
    root.dataset.layer = String(current.layer);
    root.dataset.head = String(current.head);
  };

  const drawTokens = () => {
    const i = activeToken();
    strip.mark(i ?? null, "cb-token-active");
    if (!current || i === null || i === undefined || i >= current.n) {
      strip.color(null, sequential(false), (v) => v);
      caption.textContent = "Hover a token to see where it attends; click to lock.";
      return;
    }
    const row = Array.from(current.codes.subarray(i * current.n, (i + 1) * current.n));
    strip.color(row, sequential(isDark(root)), (c) => c / 255);
    caption.textContent = `Where token #${i} ${JSON.stringify(tokens[i])} attends (L${current.layer}H${current.head})${link.get("token") === i ? " · locked" : ""}`;
  };

  const show = async () => {
    const layer = link.get("layer") ?? layers[0];
    const head = link.get("head") ?? 0;
    layerSel.value = String(layer);
    headSel.value = String(head);
    if (current && current.layer === layer && current.head === head) return;
    if (!layers.includes(layer) || head < 0 || head >= nHeads) return;
    status.textContent = "loading…";
    try {
      const { reply, buffers } = await fetcher.get({ kind: "fetch-head", layer, head });
      const enc = reply.pattern as Encoded;
      current = { layer, head, codes: uint8View(enc, buffers), lo: enc.lo, scale: enc.scale, n: enc.shape[0] };
      status.textContent = "";
      drawHeat();
      drawTokens();
    } catch (err) {
      status.textContent = String((err as Error).message ?? err);
      root.classList.add("cb-error");
    }
  };

  layerSel.addEventListener("change", () => select(link, { layer: Number(layerSel.value) }), { signal });
  headSel.addEventListener("change", () => select(link, { head: Number(headSel.value) }), { signal });
  canvas.addEventListener("pointermove", (ev) => {
    const cell = cellAt(canvas, ev);
    if (!cell || !current) {
      tip.hidden = true;
      return;
    }
    const p = current.lo + current.codes[cell.row * current.n + cell.col] * current.scale;
    tip.hidden = false;
    tip.textContent = `${JSON.stringify(tokens[cell.row])} → ${JSON.stringify(tokens[cell.col])}: ${p.toFixed(3)}`;
    if (link.get("hover_token") !== cell.row) hover(link, { hover_token: cell.row });
  }, { signal });
  canvas.addEventListener("pointerleave", () => {
    tip.hidden = true;
    hover(link, { hover_token: null });
  }, { signal });
  canvas.addEventListener("click", (ev) => {
    const cell = cellAt(canvas, ev);
    if (cell) select(link, { token: link.get("token") === cell.row ? null : cell.row });
  }, { signal });
  root.tabIndex = 0;
  root.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") select(link, { token: null });
  }, { signal });

  const offSel = onSelection(link, ["layer", "head"], () => void show());
  const offTok = onSelection(link, ["token", "hover_token"], drawTokens);
  const offTheme = followTheme(model as AnyModel, root, () => {
    drawHeat();
    drawTokens();
  });
  drawHeat();
  drawTokens();
  await show();

  return () => {
    abort.abort();
    offSel();
    offTok();
    offTheme();
    fetcher.dispose();
    root.remove();
  };
}
