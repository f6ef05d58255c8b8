// The kernel-routed link (hosts that isolate cells): local state, `_sel` round trip, fallback.
import { describe, expect, it } from "vitest";
import { KernelLink, resolveLink, viaKernel } from "../src/link";

type Handler = (...args: unknown[]) => void;

function fakeModel(state: Record<string, unknown>) {
  const handlers = new Map<string, Set<Handler>>();
  const sent: unknown[] = [];
  let saves = 0;
  const model = {
    get: (k: string) => state[k],
    set: (k: string, v: unknown) => {
      state[k] = v;
      for (const cb of handlers.get(`change:${k}`) ?? []) cb();
    },
    on: (e: string, cb: Handler) => {
      if (!handlers.has(e)) handlers.set(e, new Set());
      handlers.get(e)?.add(cb);
    },
    off: (e: string, cb: Handler) => handlers.get(e)?.delete(cb),
    send: (m: unknown) => sent.push(m),
    save_changes: () => {
      saves++;
    },
    widget_manager: {
      get_model: async () => {
        throw new Error("isolated cell");
      },
    },
  };
  return { model, sent, saves: () => saves };
}

describe("KernelLink", () => {
  it("asks Python to mirror, merges `_sel`, and saves clicks into `_sel`", () => {
    const { model, sent, saves } = fakeModel({ _sel: { layer: 3, head: 1 } });
    const link = new KernelLink(model as never);
    expect(sent).toEqual([{ kind: "link-fallback" }]);
    expect(link.get("layer")).toBe(3);
    const seen: string[] = [];
    link.on("change:head", () => seen.push("head"));
    model.set("_sel", { layer: 3, head: 2, token: 4 }); // Python forwarded another view's click
    expect(seen).toEqual(["head"]);
    expect(link.get("token")).toBe(4);
    link.set("token", 5); // a hover: local only
    expect(saves()).toBe(0);
    link.save_changes(); // a click: through the kernel
    expect(saves()).toBe(1);
    expect(model.get("_sel")).toMatchObject({ layer: 3, head: 2, token: 5 });
    link.dispose();
  });

  it("is what resolveLink falls back to when the link model cannot be reached", async () => {
    const { model } = fakeModel({ link: "IPY_MODEL_abc", _sel: {} });
    const warn = console.warn;
    console.warn = () => {};
    try {
      const link = await resolveLink({ model: model as never });
      expect(viaKernel(link)).toBe(true);
    } finally {
      console.warn = warn;
    }
  });

  it("uses the host's shared model when it resolves", async () => {
    const shared = fakeModel({}).model;
    const { model } = fakeModel({ link: "IPY_MODEL_abc" });
    const refs: string[] = [];
    const host = {
      getModel: async (ref: string) => {
        refs.push(ref);
        return shared;
      },
      getWidget: async () => {
        throw new Error("unused");
      },
    };
    const link = await resolveLink({ model: model as never, host: host as never });
    expect(link).toBe(shared as never);
    expect(refs).toEqual(["anywidget:abc"]);
    expect(viaKernel(link)).toBe(false);
  });
});
