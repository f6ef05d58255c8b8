// Logit lens view: layers × positions grid (last layer on top), each cell the layer's top-1
// next-token prediction coloured by probability; hover for the top-k, click to select.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { decode } from "../codec";
import { cssColor, sequential, textOn } from "../colormaps";
import { hover, onSelection, resolveLink, select } from "../link";
import { fitText } from "../heatmap";
import { followTheme, isDark } from "../theme";
import type { Encoded } from "../types";
import { el } from "../dom";
import { ColorBar } from "../colorbar";
import { figureCanvas, figureHooks, paintedAt, recordCanvas } from "../figure";

interface LensState {
  tokens: string[];
  layer_indices: number[];
  k: number;
  target_tokens: string[];
  target_label: string;
  color_by: string;
  _strings: string[];
  _top_index: Encoded;
  _top_prob: Encoded;
  _target_prob: Encoded;
  _target_rank: Encoded;
  theme: string;
  link: string;
}

/** Token text made visible in a cell: newlines and tabs as symbols, nothing interpreted. */
export function visible(t: string): string {
  const s = t.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/\r/g, "␍");
  return s !== "" && s.trim() === "" ? s.replace(/ /g, "␣") : s;
}

export interface LensLayout {
  axis: number; // left axis width
  col: number;
  row: number;
  top: number; // height of the tracked-token row
  bottom: number; // height of the input-token row
}

export function lensLayout(nLayers: number, nPos: number): LensLayout {
  const row = Math.max(12, Math.min(20, Math.floor(540 / Math.max(nLayers, 1))));
  // Canvases wider than ~32k px fail to draw: very long prompts get narrower, text-less columns.
  const col = Math.max(4, Math.min(nPos > 40 ? 48 : 64, Math.floor(30000 / Math.max(nPos, 1))));
  return { axis: 34, col, row, top: row + 6, bottom: row + 6 };
}

export async function render(props: RenderProps<LensState>) {
  const { model, el: host } = props;
  const abort = new AbortController();
  const signal = abort.signal;
  const link = await resolveLink(props);
  const tokens = model.get("tokens");
  const layers = model.get("layer_indices");
  const k = model.get("k");
  const strings = model.get("_strings");
  const targets = model.get("target_tokens");
  const L = layers.length;
  const P = tokens.length;
  const topIndex = decode(model.get("_top_index")).data; // [L, P, k]
  const topProb = decode(model.get("_top_prob")).data;
  const targetProb = decode(model.get("_target_prob")).data; // [L, P]
  const targetRank = decode(model.get("_target_rank")).data;
  const lay = lensLayout(L, P);
  const W = lay.axis + P * lay.col;
  const Hpx = lay.top + L * lay.row + lay.bottom;

  const root = el("div", "cb-root cb-lens", host);
  root.tabIndex = 0;
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Logit lens";
  const colorSel = el("select", "cb-select", header);
  colorSel.setAttribute("aria-label", "colour by");
  colorSel.add(new Option("colour: top-1 probability", "top"));
  colorSel.add(new Option(`colour: P(${model.get("target_label")})`, "target"));
  colorSel.value = model.get("color_by") === "target" ? "target" : "top";
  const status = el("span", "cb-status", header);
  status.textContent = "rows: layers (last on top) · columns: positions · hover for top-" + k;

  const scroller = el("div", "cb-lens-scroll", root);
  const figure = el("div", "cb-figure cb-lens-figure", scroller);
  figure.style.width = `${W}px`;
  figure.style.height = `${Hpx}px`;
  const canvas = el("canvas", "cb-lens-grid", figure);
  canvas.style.width = `${W}px`;
  canvas.style.height = `${Hpx}px`;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `logit lens: ${L} layers × ${P} positions`);
  const colMark = el("div", "cb-lens-col", figure);
  colMark.hidden = true;
  const cellMark = el("div", "cb-lens-cell", figure);
  cellMark.hidden = true;
  const colorBar = new ColorBar(root, "top-1 probability");
  const tip = el("div", "cb-tip cb-lens-tip", root);
  tip.hidden = true;
  let figureMode = false; // drawing a figure: no hover marks

  // Row r (0 = top) shows layer index L - 1 - r.
  const rowOf = (li: number) => L - 1 - li;
  const value = (li: number, p: number) =>
    colorSel.value === "target" ? targetProb[li * P + p] : topProb[(li * P + p) * k];


  const draw = () => {
    const r = Math.max(1, Math.min(Math.round(window.devicePixelRatio || 1), Math.floor(32000 / W)));
    canvas.width = W * r;
    canvas.height = Hpx * r;
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.scale(r, r);
    paint(ctx);
    colorBar.set(sequential(isDark(root)), "0", "1", colorSel.value === "target" ? `P(${model.get("target_label")})` : "top-1 probability");
    root.dataset.colorBy = colorSel.value;
  };

  /** The grid in CSS pixels (also recorded as figure primitives: text stays text). */
  const paint = (ctx: CanvasRenderingContext2D) => {
    const dark = isDark(root);
    const lut = sequential(dark);
    const style = getComputedStyle(root);
    const fg = style.getPropertyValue("--cb-fg").trim() || "#111";
    const muted = style.getPropertyValue("--cb-muted").trim() || "#666";
    const panel = style.getPropertyValue("--cb-panel").trim() || "#eee";
    const mono = "11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
    ctx.clearRect(0, 0, W, Hpx);
    ctx.textBaseline = "middle";
    ctx.font = mono;
    for (let li = 0; li < L; li++) {
      const y = lay.top + rowOf(li) * lay.row;
      ctx.fillStyle = muted;
      ctx.textAlign = "right";
      ctx.fillText(String(layers[li]), lay.axis - 6, y + lay.row / 2);
      ctx.textAlign = "left";
      for (let p = 0; p < P; p++) {
        const x = lay.axis + p * lay.col;
        const v = value(li, p);
        const t = Number.isFinite(v) ? Math.max(0, Math.min(1, v)) : Number.NaN;
        ctx.fillStyle = Number.isFinite(t) ? cssColor(lut, t) : panel;
        ctx.fillRect(x, y, lay.col - 1, lay.row - 1);
        ctx.fillStyle = Number.isFinite(t) ? textOn(lut, t) : muted;
        if (lay.col >= 20) {
          const text = visible(strings[topIndex[(li * P + p) * k]] ?? "");
          ctx.fillText(fitText(ctx, text, lay.col - 6), x + 3, y + lay.row / 2);
        }
      }
    }
    // Tracked token row (top) and input tokens (bottom).
    ctx.fillStyle = muted;
    ctx.textAlign = "right";
    ctx.fillText(model.get("target_label") === "next token" ? "next" : "tgt", lay.axis - 6, lay.top / 2);
    ctx.fillText("in", lay.axis - 6, Hpx - lay.bottom / 2);
    ctx.textAlign = "left";
    for (let p = 0; p < P && lay.col >= 20; p++) {
      const x = lay.axis + p * lay.col + 3;
      ctx.fillStyle = muted;
      ctx.fillText(fitText(ctx, visible(targets[p] ?? ""), lay.col - 6), x, lay.top / 2);
      ctx.fillStyle = fg;
      ctx.fillText(fitText(ctx, visible(tokens[p]), lay.col - 6), x, Hpx - lay.bottom / 2);
    }
  };
  // SVG: every cell's text as text; PNG: the grid painted natively at the figure's scale.
  figureCanvas(canvas, (scale, format) => (format === "svg" ? recordCanvas(paint) : paintedAt(W, Hpx, scale, paint)));

  const cellFrom = (ev: { clientX: number; clientY: number }) => {
    const rect = canvas.getBoundingClientRect();
    const x = ((ev.clientX - rect.left) / rect.width) * W;
    const y = ((ev.clientY - rect.top) / rect.height) * Hpx;
    const p = Math.floor((x - lay.axis) / lay.col);
    if (p < 0 || p >= P) return null;
    const row = Math.floor((y - lay.top) / lay.row);
    if (row < 0 || row >= L) return { li: null, p };
    return { li: L - 1 - row, p };
  };

  const tipText = (li: number, p: number) => {
    const lines = [`L${layers[li]} · #${p} ${JSON.stringify(tokens[p])}`];
    for (let j = 0; j < k; j++) {
      const s = strings[topIndex[(li * P + p) * k + j]] ?? "";
      lines.push(`${String(j + 1).padStart(2)}. ${JSON.stringify(s).padEnd(14)} ${topProb[(li * P + p) * k + j].toFixed(3)}`);
    }
    const tp = targetProb[li * P + p];
    if (Number.isFinite(tp) && targets[p]) {
      lines.push(`${model.get("target_label") === "next token" ? "next" : "target"} ${JSON.stringify(targets[p])}: ${tp.toFixed(3)} (rank ${targetRank[li * P + p] + 1})`);
    }
    return lines.join("\n");
  };

  const place = (mark: HTMLElement, li: number | null, p: number) => {
    mark.style.left = `${lay.axis + p * lay.col - 1}px`;
    mark.style.width = `${lay.col + 1}px`;
    if (li === null) {
      mark.style.top = "0px";
      mark.style.height = `${Hpx}px`;
    } else {
      mark.style.top = `${lay.top + rowOf(li) * lay.row - 1}px`;
      mark.style.height = `${lay.row + 1}px`;
    }
  };

  const drawMarks = () => {
    const tok = figureMode ? link.get("token") : (link.get("token") ?? link.get("hover_token"));
    colMark.hidden = !(tok !== null && tok !== undefined && tok >= 0 && tok < P);
    if (!colMark.hidden) place(colMark, null, tok as number);
    const li = layers.indexOf(link.get("layer") ?? -1);
    const sel = link.get("token");
    cellMark.hidden = !(li >= 0 && sel !== null && sel !== undefined && sel >= 0 && sel < P);
    if (!cellMark.hidden) place(cellMark, li, sel as number);
    if (sel !== null && sel !== undefined) root.dataset.token = String(sel);
    else delete root.dataset.token;
    if (li >= 0) root.dataset.layer = String(layers[li]);
  };

  canvas.addEventListener("pointermove", (ev) => {
    const c = cellFrom(ev);
    if (!c) {
      tip.hidden = true;
      delete root.dataset.hover;
      return;
    }
    if (link.get("hover_token") !== c.p) hover(link, { hover_token: c.p });
    if (c.li === null) {
      tip.hidden = true;
      delete root.dataset.hover;
      return;
    }
    tip.hidden = false;
    tip.textContent = tipText(c.li, c.p);
    const rr = root.getBoundingClientRect();
    const x = ev.clientX - rr.left + 14;
    tip.style.left = `${Math.min(x, Math.max(0, rr.width - 260))}px`;
    tip.style.top = `${ev.clientY - rr.top + 14}px`;
    root.dataset.hover = `${layers[c.li]},${c.p}`;
  }, { signal });
  canvas.addEventListener("pointerleave", () => {
    tip.hidden = true;
    delete root.dataset.hover;
    hover(link, { hover_token: null });
  }, { signal });
  canvas.addEventListener("click", (ev) => {
    const c = cellFrom(ev);
    if (!c) return;
    if (c.li === null) select(link, { token: link.get("token") === c.p ? null : c.p });
    else select(link, { layer: layers[c.li], token: c.p });
  }, { signal });
  colorSel.addEventListener("change", () => {
    model.set("color_by", colorSel.value);
    model.save_changes();
    draw();
  }, { signal });
  root.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") select(link, { token: null });
  }, { signal });
  const onColor = () => {
    colorSel.value = model.get("color_by") === "target" ? "target" : "top";
    draw();
  };
  model.on("change:color_by", onColor);

  const offSel = onSelection(link, ["layer", "token", "hover_token"], drawMarks);
  const offTheme = followTheme(model as AnyModel, root, draw);
  figureHooks(root, {
    title: () => `Logit lens · ${L} layers × ${P} positions · colour: ${colorSel.value === "target" ? `P(${model.get("target_label")})` : "top-1 probability"}`,
    enter: () => {
      figureMode = true;
      drawMarks();
    },
    exit: () => {
      figureMode = false;
      drawMarks();
    },
  });
  draw();
  drawMarks();
  root.dataset.ready = "true";

  return () => {
    abort.abort();
    offSel();
    offTheme();
    model.off("change:color_by", onColor);
    root.remove();
  };
}
