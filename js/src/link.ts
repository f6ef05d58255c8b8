// Resolves the shared selection model a view references, and helpers to read/write it.
//
// Normal hosts (JupyterLab, Notebook 7, VS Code, marimo, the static report) hand every view
// the same link model: hovers travel in the browser only, clicks also reach Python. Hosts that
// isolate output cells (Colab) cannot resolve another widget's model; then the view falls back
// to a `KernelLink` over its own `_sel` trait and the kernel forwards clicks between views.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { Emitter } from "./emitter";
import type { LinkModel, Selection } from "./types";

const PREFIX = "IPY_MODEL_";
export const RESOLVE_TIMEOUT_MS = 4_000;
const KEYS: (keyof Selection)[] = ["layer", "head", "token", "neuron", "prompt", "hover_token", "dictionary", "feature"];


/** A link that lives on the view's own model: clicks go through the kernel, hovers stay local. */
export class KernelLink extends Emitter {
  readonly viaKernel = true;
  private state: Selection = { layer: null, head: null, token: null, neuron: null, prompt: 0, hover_token: null, dictionary: null, feature: null };
  private onRemote = () => this.merge(this.model.get("_sel") as Partial<Selection> | undefined);

  constructor(private model: AnyModel) {
    super();
    this.merge(model.get("_sel") as Partial<Selection> | undefined);
    model.on("change:_sel", this.onRemote);
    model.send({ kind: "link-fallback" }); // asks Python to mirror the shared link into `_sel`
  }

  private merge(values: Partial<Selection> | undefined): void {
    for (const k of KEYS) if (values && k in values) this.set(k, values[k] as never);
  }

  get<K extends keyof Selection>(key: K): Selection[K] {
    return this.state[key];
  }

  set<K extends keyof Selection>(key: K, value: Selection[K]): void {
    if (Object.is(this.state[key], value)) return;
    this.state[key] = value;
    this.emit(`change:${key}`);
    this.emit("change");
  }

  save_changes(): void {
    this.model.set("_sel", { ...this.state });
    this.model.save_changes();
  }

  send(): void {}

  get widget_manager(): AnyModel["widget_manager"] {
    return this.model.widget_manager;
  }

  dispose(): void {
    this.model.off("change:_sel", this.onRemote);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

async function lookUp(props: Pick<RenderProps, "model"> & Partial<Pick<RenderProps, "host">>, ref: string): Promise<LinkModel> {
  const id = ref.slice(PREFIX.length);
  // anywidget >= 0.10 hosts resolve "anywidget:<id>"; older hosts only have widget_manager.
  if (props.host?.getModel) {
    try {
      return (await props.host.getModel(`anywidget:${id}`)) as unknown as LinkModel;
    } catch (err) {
      if (!(props.model as AnyModel).widget_manager?.get_model) throw err;
    }
  }
  return (await (props.model as AnyModel).widget_manager.get_model(id)) as unknown as LinkModel;
}

/** Another widget's model named by an `IPY_MODEL_` reference (e.g. a view another follows);
 * rejects when the host cannot resolve it (not on the page, isolated cells). */
export async function resolveModel(props: Pick<RenderProps, "model"> & Partial<Pick<RenderProps, "host">>, ref: string): Promise<AnyModel> {
  if (!ref.startsWith(PREFIX)) throw new Error(`[circuitboard] not a model reference: ${JSON.stringify(ref)}`);
  return (await withTimeout(lookUp(props, ref), RESOLVE_TIMEOUT_MS)) as unknown as AnyModel;
}

/** The view's link model; a `KernelLink` when the host cannot resolve it (isolated cells). */
export async function resolveLink(props: Pick<RenderProps, "model"> & Partial<Pick<RenderProps, "host">>): Promise<LinkModel> {
  const ref = props.model.get("link") as unknown;
  if (typeof ref !== "string" || !ref.startsWith(PREFIX)) {
    throw new Error(`[circuitboard] view has no link model (got ${JSON.stringify(ref)})`);
  }
  try {
    const link = await withTimeout(lookUp(props, ref), RESOLVE_TIMEOUT_MS);
    if (link && typeof link.get === "function") return link;
    throw new Error("not a model");
  } catch (err) {
    console.warn("[circuitboard] shared selection not reachable in this front end; linking through the kernel.", err);
    return new KernelLink(props.model as AnyModel) as unknown as LinkModel;
  }
}

/** True when clicks reach other views only through the Python kernel (e.g. Colab). */
export function viaKernel(link: LinkModel): boolean {
  return (link as unknown as { viaKernel?: boolean }).viaKernel === true;
}

function apply(link: LinkModel, values: Partial<Selection>): void {
  for (const [k, v] of Object.entries(values)) link.set(k as keyof Selection, v as never);
}

// Hovers coalesced per link: at most one update per animation frame, the latest values win.
const pendingHover = new WeakMap<LinkModel, Partial<Selection>>();

function flushHover(link: LinkModel): void {
  const values = pendingHover.get(link);
  if (!values) return;
  pendingHover.delete(link);
  apply(link, values);
}

/** Browser-only update (hover): other views see it on the next frame, the kernel never does.
 * Throttled to one update per animation frame however fast the pointer moves. */
export function hover(link: LinkModel, values: Partial<Selection>): void {
  const pending = pendingHover.get(link);
  if (pending) {
    Object.assign(pending, values);
    return;
  }
  pendingHover.set(link, { ...values });
  requestAnimationFrame(() => flushHover(link));
}

/**
 * A layer belongs to what was chosen in it: choosing a head clears the neuron, choosing a
 * neuron clears the head, a layer alone clears both. So a neuron click never moves the
 * attention view to a head nobody chose, nor a head click the neuron view to another layer's
 * neuron. Python's `Link.select` applies the same rule.
 */
export function completeSelection(values: Partial<Selection>): Partial<Selection> {
  const out: Partial<Selection> = { ...values };
  const has = (k: keyof Selection) => Object.prototype.hasOwnProperty.call(values, k);
  if (values.head !== null && values.head !== undefined && !has("neuron")) out.neuron = null;
  if (values.neuron !== null && values.neuron !== undefined && !has("head")) out.head = null;
  if (has("layer") && !has("head") && !has("neuron")) {
    out.head = null;
    out.neuron = null;
  }
  return out;
}

/** A click: update every view and the Python traits (at once; pending hovers apply first). */
export function select(link: LinkModel, values: Partial<Selection>): void {
  flushHover(link);
  apply(link, completeSelection(values));
  try {
    link.save_changes();
  } catch (err) {
    // A kernel that is gone: the views in this page still follow each other.
    console.warn("[circuitboard] the selection could not reach Python (the kernel is gone?)", err);
  }
}

export function onSelection(link: LinkModel, keys: (keyof Selection)[], cb: () => void): () => void {
  for (const k of keys) link.on(`change:${k}`, cb);
  return () => {
    for (const k of keys) link.off(`change:${k}`, cb);
  };
}
