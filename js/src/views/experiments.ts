// Experiments view: the experiment log of a project folder. Left, experiments and their runs
// (newest first: version, status, start, wall time); right, the selected run (arguments,
// results, provenance) and the source of its version with the diff from the previous version.
// Clicking a run sets `selected_run` (the kernel then shows the results' views below).
// Everything is text content: sources, arguments and results never become markup.
import type { RenderProps } from "@anywidget/types";
import { el } from "../dom";
import { followTheme } from "../theme";

interface Version {
  version: number;
  source_hash: string;
  runs: number;
  source: string;
  diff: string;
}
interface ResultEntry {
  key: string;
  kind: string;
  type: string;
  summary: string;
}
interface RunInfo {
  run_id: string;
  version: number;
  status: string;
  started: string;
  wall_time_s: number | null;
  arguments: string;
  provenance: string;
  error: string;
  results: ResultEntry[];
}
interface Experiment {
  name: string;
  versions: Version[];
  runs: RunInfo[];
}
interface ExperimentsState {
  project: string;
  experiments: Experiment[];
  selected_run: string;
  theme: string;
}

/** "2026-12-06T09:45:01.123456+00:00" → "2026-12-06 09:45:01". */
export function shortTime(iso: string): string {
  return iso.replace("T", " ").replace(/\.\d+/, "").replace(/\+00:00$/, "");
}

/** A unified diff's lines with their kind (added, removed, hunk header, file header, context). */
export function diffLines(diff: string): { text: string; kind: string }[] {
  return diff
    .split("\n")
    .filter((t, i, all) => t !== "" || i < all.length - 1)
    .map((text) => {
      const kind = text.startsWith("+++") || text.startsWith("---") ? "file" : text.startsWith("@@") ? "hunk" : text.startsWith("+") ? "add" : text.startsWith("-") ? "del" : "ctx";
      return { text, kind };
    });
}

export function render({ model, el: host }: RenderProps<ExperimentsState>) {
  const abort = new AbortController();
  const signal = abort.signal;
  const root = el("div", "cb-root cb-exp", host);
  const header = el("div", "cb-header", root);
  el("span", "cb-title", header).textContent = "Experiments";
  const where = el("span", "cb-patch-desc", header);
  const body = el("div", "cb-exp-body", root);
  const list = el("div", "cb-exp-list", body);
  const detail = el("div", "cb-exp-detail", body);

  const find = (id: string): { exp: Experiment; run: RunInfo } | null => {
    for (const exp of model.get("experiments")) for (const run of exp.runs) if (run.run_id === id) return { exp, run };
    return null;
  };

  const drawDetail = () => {
    detail.replaceChildren();
    const hit = find(model.get("selected_run"));
    if (!hit) {
      el("div", "cb-exp-hint", detail).textContent = "Click a run to see its arguments, results and source.";
      return;
    }
    const { exp, run } = hit;
    const version = exp.versions.find((v) => v.version === run.version);
    el("div", "cb-exp-h", detail).textContent = `${exp.name} · v${run.version} · ${run.status}`;
    el("div", "cb-exp-meta", detail).textContent = `run ${run.run_id} · started ${shortTime(run.started)} · ${run.wall_time_s === null ? "did not finish" : `${run.wall_time_s.toPrecision(3)} s`}`;
    if (run.error) el("pre", "cb-exp-error", detail).textContent = run.error;
    el("div", "cb-exp-sub", detail).textContent = "Results";
    const res = el("ul", "cb-exp-results", detail);
    if (!run.results.length) el("li", "cb-exp-hint", res).textContent = "none stored";
    for (const r of run.results) {
      const li = el("li", "", res);
      el("span", "cb-exp-key", li).textContent = r.key;
      el("span", "cb-exp-kind", li).textContent = r.type || r.kind;
      el("span", "cb-exp-summary", li).textContent = r.summary;
    }
    el("div", "cb-exp-sub", detail).textContent = "Arguments";
    el("pre", "cb-exp-pre", detail).textContent = run.arguments;
    if (version) {
      el("div", "cb-exp-sub", detail).textContent = version.diff ? `Source: changes from v${version.version - 1} to v${version.version}` : `Source of v${version.version} [${version.source_hash.slice(0, 10)}]`;
      const pre = el("pre", "cb-exp-pre cb-exp-diff", detail);
      if (version.diff) {
        for (const line of diffLines(version.diff)) el("div", `cb-exp-line cb-exp-${line.kind}`, pre).textContent = line.text;
      } else {
        pre.textContent = version.source || "(logged without a function: no source)";
      }
    }
    const prov = el("details", "cb-exp-prov", detail);
    el("summary", "", prov).textContent = "Provenance";
    el("pre", "cb-exp-pre", prov).textContent = run.provenance;
  };

  const drawList = () => {
    where.textContent = model.get("project");
    list.replaceChildren();
    const exps = model.get("experiments");
    if (!exps.length) el("div", "cb-exp-hint", list).textContent = "No runs logged yet. Decorate a function with @cb.experiment and call it.";
    for (const exp of exps) {
      const box = el("div", "cb-exp-group", list);
      box.dataset.name = exp.name;
      const h = el("div", "cb-exp-name", box);
      h.textContent = `${exp.name} · ${exp.versions.length} version${exp.versions.length === 1 ? "" : "s"} · ${exp.runs.length} run${exp.runs.length === 1 ? "" : "s"}`;
      const table = el("table", "cb-exp-runs", box);
      for (const run of exp.runs) {
        const tr = el("tr", "cb-exp-run cb-clickable", table);
        tr.dataset.run = run.run_id;
        tr.dataset.status = run.status;
        if (run.run_id === model.get("selected_run")) tr.classList.add("cb-exp-selected");
        el("td", "cb-exp-v", tr).textContent = `v${run.version}`;
        el("td", `cb-exp-status cb-exp-${run.status}`, tr).textContent = run.status;
        el("td", "", tr).textContent = shortTime(run.started);
        el("td", "cb-exp-wall", tr).textContent = run.wall_time_s === null ? "—" : `${run.wall_time_s.toPrecision(3)} s`;
        el("td", "cb-exp-keys", tr).textContent = run.results.map((r) => r.key).join(", ");
        tr.addEventListener(
          "click",
          () => {
            model.set("selected_run", run.run_id);
            model.save_changes();
            redraw();
          },
          { signal },
        );
      }
    }
  };
  const redraw = () => {
    drawList();
    drawDetail();
  };
  redraw();
  model.on("change:experiments", redraw);
  model.on("change:selected_run", redraw);
  const offTheme = followTheme(model as never, root, () => undefined);
  root.dataset.ready = "true";
  return () => {
    abort.abort();
    offTheme();
    model.off("change:experiments", redraw);
    model.off("change:selected_run", redraw);
  };
}
