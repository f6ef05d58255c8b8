// The Backbone-style event API (on / off / emit) that anywidget models expose, for the models
// circuitboard implements itself: the report host's and the kernel-routed link.

export type Handler = (...args: unknown[]) => void;

export class Emitter {
  private handlers = new Map<string, Set<Handler>>();

  on(event: string, cb: Handler): void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(cb);
  }

  off(event?: string | null, cb?: Handler | null): void {
    if (!event) this.handlers.clear();
    else if (!cb) this.handlers.delete(event);
    else this.handlers.get(event)?.delete(cb);
  }

  protected emit(event: string, ...args: unknown[]): void {
    for (const cb of [...(this.handlers.get(event) ?? [])]) cb(...args);
  }
}
