// Asks the kernel (or the static report's embedded replies) for chunks, with a cache.
import type { AnyModel } from "@anywidget/types";
import type { Reply } from "./types";

export const FETCH_TIMEOUT_MS = 15_000;

/** What a view says when its kernel is gone: what happened, what still works, what to do. */
export const KERNEL_GONE =
  "[circuitboard] the Python kernel is gone (shut down, restarted or disconnected), so nothing new can be loaded. What this view already shows still works (hover, zoom, heads and neurons already loaded, linked views on this page). Re-run the cell to reconnect.";

/** The wait before a request counts as unanswered; `html[data-cb-fetch-timeout-ms]` overrides. */
export function fetchTimeoutMs(): number {
  const v = Number(document.documentElement.dataset.cbFetchTimeoutMs);
  return Number.isFinite(v) && v > 0 ? v : FETCH_TIMEOUT_MS;
}

/** Canonical request key: JSON with sorted keys, no `id` (Python's request_key builds the same). */
export function requestKey(msg: Record<string, unknown>): string {
  const keys = Object.keys(msg).filter((k) => k !== "id").sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(msg[k])}`).join(",")}}`;
}

/** Whether a view fetches ahead of clicks: live only (a report embeds its replies), and not
 * when `html[data-cb-prefetch=off]` says so (benchmarks compare with and without). */
export function prefetchAllowed(model: unknown): boolean {
  return !(model as { offline?: boolean }).offline && document.documentElement.dataset.cbPrefetch !== "off";
}

export interface Fetched {
  reply: Reply;
  buffers: DataView[];
}

export class Fetcher {
  private nextId = 1;
  private pending = new Map<number, { resolve: (f: Fetched) => void; reject: (e: Error) => void; timer: number }>();
  private cache = new Map<string, Promise<Fetched>>();
  private onMsg = (msg: unknown, buffers: DataView[]) => {
    const reply = msg as Reply;
    if (!reply || reply.kind !== "reply") return;
    const p = this.pending.get(reply.id);
    if (!p) return;
    this.pending.delete(reply.id);
    clearTimeout(p.timer);
    if (reply.ok) p.resolve({ reply, buffers });
    else p.reject(new Error(`[circuitboard] ${reply.error ?? "request failed"}`));
  };

  constructor(private model: AnyModel) {
    model.on("msg:custom", this.onMsg);
  }

  /** Fetch once per key; failures are not cached so a retry can succeed. */
  get(msg: Record<string, unknown> & { kind: string }): Promise<Fetched> {
    const key = requestKey(msg);
    let hit = this.cache.get(key);
    if (!hit) {
      hit = this.send(msg);
      this.cache.set(key, hit);
      hit.catch(() => this.cache.delete(key));
    }
    return hit;
  }

  /** Ask once, without keeping the reply (the caller keeps what it needs, within its budget). */
  request(msg: Record<string, unknown> & { kind: string }): Promise<Fetched> {
    return this.send(msg);
  }

  has(msg: Record<string, unknown>): boolean {
    return this.cache.has(requestKey(msg));
  }

  private send(msg: Record<string, unknown>): Promise<Fetched> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = window.setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${KERNEL_GONE} (no answer from the Python kernel in ${Math.round(fetchTimeoutMs() / 1000)} s)`));
      }, fetchTimeoutMs());
      this.pending.set(id, { resolve, reject, timer });
      try {
        this.model.send({ ...msg, id });
      } catch (err) {
        // Jupyter throws at once ("Cannot send", "Kernel is dead") when the kernel is gone.
        clearTimeout(timer);
        this.pending.delete(id);
        reject(new Error(`${KERNEL_GONE} (${String((err as Error)?.message ?? err)})`));
      }
    });
  }

  dispose(): void {
    this.model.off("msg:custom", this.onMsg);
    for (const p of this.pending.values()) clearTimeout(p.timer);
    this.pending.clear();
  }
}
