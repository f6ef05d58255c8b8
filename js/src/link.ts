// Resolves the shared selection model a view references, and helpers to read/write it.
import type { AnyModel, RenderProps } from "@anywidget/types";
import type { LinkModel, Selection } from "./types";

const PREFIX = "IPY_MODEL_";

export async function resolveLink(props: Pick<RenderProps, "model"> & Partial<Pick<RenderProps, "host">>): Promise<LinkModel> {
  const ref = props.model.get("link") as unknown;
  if (typeof ref !== "string" || !ref.startsWith(PREFIX)) {
    throw new Error(`[circuitboard] view has no link model (got ${JSON.stringify(ref)})`);
  }
  if (props.host?.getModel) return (await props.host.getModel(ref)) as unknown as LinkModel;
  return (await (props.model as AnyModel).widget_manager.get_model(ref.slice(PREFIX.length))) as unknown as LinkModel;
}

/** Browser-only update (hover): other views see it at once, the kernel never does. */
export function hover(link: LinkModel, values: Partial<Selection>): void {
  for (const [k, v] of Object.entries(values)) link.set(k as keyof Selection, v as never);
}

/** A click: update every view and the Python traits. */
export function select(link: LinkModel, values: Partial<Selection>): void {
  hover(link, values);
  link.save_changes();
}

export function onSelection(link: LinkModel, keys: (keyof Selection)[], cb: () => void): () => void {
  for (const k of keys) link.on(`change:${k}`, cb);
  return () => {
    for (const k of keys) link.off(`change:${k}`, cb);
  };
}
