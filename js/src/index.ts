// The one bundle: every widget runs this module; `_view` picks the view that renders it.
import type { RenderProps } from "@anywidget/types";
import { attachFigure } from "./figure";
import * as ablation from "./views/ablation"; // issue 29
import * as attention from "./views/attention";
import * as attribution from "./views/attribution";
import * as causal_trace from "./views/causal_trace"; // issue 29, second half
import * as circuit from "./views/circuit";
import * as compare from "./views/compare";
import * as composition from "./views/composition"; // issue 29
import * as dashboard from "./views/dashboard";
import * as experiments from "./views/experiments"; // issue 29, second half
import * as features from "./views/features";
import * as generation from "./views/generation";
import * as graph from "./views/graph"; // attribution graphs (issue #27)
import * as lens from "./views/lens";
import * as neurons from "./views/neurons";
import * as patching from "./views/patching";
import * as training from "./views/training"; // training dynamics

type Cleanup = void | (() => void | Promise<void>);
type View = { render(props: RenderProps): Promise<Cleanup> | Cleanup };

export const VIEWS: Record<string, View> = {
  ablation: ablation as unknown as View,
  attention: attention as unknown as View,
  attribution: attribution as unknown as View,
  causal_trace: causal_trace as unknown as View,
  circuit: circuit as unknown as View,
  compare: compare as unknown as View,
  composition: composition as unknown as View,
  dashboard: dashboard as unknown as View,
  experiments: experiments as unknown as View,
  features: features as unknown as View,
  generation: generation as unknown as View,
  graph: graph as unknown as View,
  lens: lens as unknown as View,
  neurons: neurons as unknown as View,
  patching: patching as unknown as View,
  training: training as unknown as View, // training dynamics
  link: { render: () => undefined }, // the shared selection has no visual
};

async function render(props: RenderProps) {
  const name = props.model.get("_view") as string;
  const view = VIEWS[name];
  if (!view) {
    const msg = document.createElement("div");
    msg.className = "cb-error";
    msg.textContent = `[circuitboard] unknown view ${JSON.stringify(name)}; the Python package and the bundle may be out of date.`;
    props.el.appendChild(msg);
    return;
  }
  try {
    let cleanup = await view.render(props);
    if (name === "link") return cleanup;
    let offFigure = attachFigure(props.el, props.model, name); // PNG/SVG buttons, save_png()
    // A view whose data Python replaced (e.g. AttentionView.set_attention) bumps `_revision`:
    // draw it again from its new state, in place (the link keeps the selection).
    let redraw: () => void = () => undefined;
    if (typeof props.model.get("_revision") === "number") {
      let queue = Promise.resolve();
      redraw = () => {
        queue = queue.then(async () => {
          offFigure();
          if (typeof cleanup === "function") await cleanup();
          props.el.replaceChildren();
          cleanup = await view.render(props);
          offFigure = attachFigure(props.el, props.model, name);
          props.el.dataset.cbRevision = String(props.model.get("_revision"));
        });
      };
      props.model.on("change:_revision", redraw);
    }
    return async () => {
      props.model.off("change:_revision", redraw);
      offFigure();
      if (typeof cleanup === "function") await cleanup();
    };
  } catch (err) {
    console.error("[circuitboard]", err);
    const msg = document.createElement("div");
    msg.className = "cb-error";
    msg.textContent = `[circuitboard] ${name} view failed: ${String((err as Error).message ?? err)}`;
    props.el.appendChild(msg);
  }
}

export default { render };
