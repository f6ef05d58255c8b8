// The static report's host: implements the anywidget model API over embedded state and replies.
import { Emitter } from "./emitter";
import type { Reply } from "./types";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type BlobRef = { $blob: [number, number] };

interface ReportData {
  version: number;
  models: Record<string, { state: Record<string, Json> }>;
  replies: Record<string, Record<string, { fields: Record<string, Json>; buffers: [number, number][] }>>;
  items: ({ type: "view"; model: string } | { type: "markdown"; html: string })[];
}


function b64ToBytes(b64: string): Uint8Array {
  const bin = atob(b64.replace(/\s+/g, ""));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function gunzip(bytes: Uint8Array): Promise<Uint8Array> {
  if (bytes.length === 0) return bytes;
  const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function isBlobRef(v: unknown): v is BlobRef {
  return typeof v === "object" && v !== null && "$blob" in v;
}

/** Replace {$blob: [offset, length]} with DataViews, as Jupyter hands buffers to widgets. */
function hydrate(v: Json | BlobRef, blob: Uint8Array): unknown {
  if (isBlobRef(v)) return new DataView(blob.buffer, blob.byteOffset + v.$blob[0], v.$blob[1]);
  if (Array.isArray(v)) return v.map((x) => hydrate(x, blob));
  if (v && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = hydrate(x as Json, blob);
    return out;
  }
  return v;
}

class HostModel extends Emitter {
  /** A report's model: every reply is embedded, so views need not fetch ahead of clicks. */
  readonly offline = true;

  constructor(
    readonly id: string,
    private state: Record<string, unknown>,
    private replies: ReportData["replies"][string],
    private blob: Uint8Array,
    readonly widget_manager: { get_model(id: string): Promise<HostModel> },
  ) {
    super();
  }

  get(key: string): unknown {
    return this.state[key];
  }

  set(key: string, value: unknown): void {
    if (Object.is(this.state[key], value)) return;
    this.state[key] = value;
    this.emit(`change:${key}`);
    this.emit("change");
  }

  save_changes(): void {
    // No kernel in a report: changes are already applied locally.
  }

  send(content: Record<string, unknown>): void {
    // Only fetch requests are answered; figure replies and link fallbacks are for a kernel.
    if (typeof content.kind !== "string" || !content.kind.startsWith("fetch") || typeof content.id !== "number") return;
    if (document.documentElement.dataset.cbKernel === "gone") return; // test hook: a kernel that never answers
    if (document.documentElement.dataset.cbKernel === "dead") throw new Error("Cannot send"); // test hook: as Jupyter's comm
    const id = content.id as number;
    const key = requestKeyOf(content);
    const hit = this.replies?.[key];
    setTimeout(() => {
      if (hit) {
        const buffers = hit.buffers.map(([o, n]) => new DataView(this.blob.buffer, this.blob.byteOffset + o, n));
        this.emit("msg:custom", { kind: "reply", id, ok: true, ...(hydrate(hit.fields, this.blob) as object) } as Reply, buffers);
      } else {
        this.emit("msg:custom", { kind: "reply", id, ok: false, error: "this part was not included in the report (size budget); open the notebook to see it." } as Reply, []);
      }
    }, 0);
  }
}

function requestKeyOf(msg: Record<string, unknown>): string {
  const keys = Object.keys(msg).filter((k) => k !== "id").sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(msg[k])}`).join(",")}}`;
}

/** The page's auto / light / dark button; views follow `html[data-theme]` (see theme.ts). */
function themeToggle(): void {
  const button = document.querySelector<HTMLButtonElement>(".cb-theme-toggle");
  if (!button) return;
  const modes = ["auto", "light", "dark"] as const;
  const html = document.documentElement;
  const show = () => {
    const mode = html.dataset.theme ?? "auto";
    button.textContent = `${mode === "dark" ? "\u263E" : mode === "light" ? "\u2600" : "\u25D0"} ${mode}`;
  };
  button.addEventListener("click", () => {
    const next = modes[(modes.indexOf((html.dataset.theme ?? "auto") as (typeof modes)[number]) + 1) % modes.length];
    if (next === "auto") delete html.dataset.theme;
    else html.dataset.theme = next;
    show();
  });
  show();
}

async function main(): Promise<void> {
  themeToggle();
  const text = (id: string) => document.getElementById(id)?.textContent ?? "";
  const data = JSON.parse(text("cb-state")) as ReportData;
  const blob = await gunzip(b64ToBytes(text("cb-blob")));
  const bundleUrl = URL.createObjectURL(new Blob([b64ToBytes(text("cb-bundle")) as BlobPart], { type: "text/javascript" }));
  const bundle = (await import(/* @vite-ignore */ bundleUrl)).default as {
    render(props: unknown): Promise<unknown>;
  };
  const models = new Map<string, HostModel>();
  const manager = {
    get_model: async (id: string) => {
      const m = models.get(id);
      if (!m) throw new Error(`[circuitboard] report has no model ${id}`);
      return m;
    },
  };
  for (const [id, m] of Object.entries(data.models)) {
    models.set(id, new HostModel(id, hydrate(m.state, blob) as Record<string, unknown>, data.replies[id] ?? {}, blob, manager));
  }
  const hostApi = {
    getModel: (ref: string) => manager.get_model(ref.replace(/^(IPY_MODEL_|anywidget:)/, "")),
  };
  const container = document.getElementById("cb-report") ?? document.body;
  for (const item of data.items) {
    if (item.type !== "view") continue;
    const slot = container.querySelector<HTMLElement>(`[data-cb-model="${CSS.escape(item.model)}"]`);
    const model = models.get(item.model);
    if (!slot || !model) continue;
    const signal = new AbortController().signal;
    await bundle.render({ model, el: slot, host: hostApi, signal, experimental: {} });
  }
  document.documentElement.dataset.cbReady = "true";
}

main().catch((err) => {
  console.error("[circuitboard] report failed to start", err);
  const el = document.createElement("pre");
  el.className = "cb-error";
  el.textContent = `[circuitboard] report failed to start: ${String((err as Error)?.message ?? err)}`;
  document.body.prepend(el);
});
