// Light or dark: follows JupyterLab, VS Code, marimo, else the OS; the `theme` trait can force it.
import type { AnyModel } from "@anywidget/types";

export function hostIsDark(): boolean {
  const body = document.body;
  const jp = body?.dataset.jpThemeLight;
  if (jp !== undefined) return jp === "false";
  if (body?.classList.contains("vscode-dark") || body?.classList.contains("vscode-high-contrast")) return true;
  if (body?.classList.contains("vscode-light")) return false;
  const html = document.documentElement;
  if (html.classList.contains("dark") || html.dataset.theme === "dark" || body?.classList.contains("dark-theme")) return true;
  if (html.dataset.theme === "light") return false;
  return window.matchMedia?.("(prefers-color-scheme: dark)").matches ?? false;
}

/** Apply the theme to `root` now and whenever it changes; returns the cleanup. */
export function followTheme(model: AnyModel, root: HTMLElement, onChange: () => void): () => void {
  const apply = () => {
    const forced = model.get("theme") as string;
    const dark = forced === "dark" || (forced !== "light" && hostIsDark());
    if (root.dataset.cbTheme !== (dark ? "dark" : "light")) {
      root.dataset.cbTheme = dark ? "dark" : "light";
      onChange();
    }
  };
  apply();
  model.on("change:theme", apply);
  const observer = new MutationObserver(apply);
  observer.observe(document.body, { attributes: true, attributeFilter: ["class", "data-jp-theme-light"] });
  observer.observe(document.documentElement, { attributes: true, attributeFilter: ["class", "data-theme"] });
  const mq = window.matchMedia?.("(prefers-color-scheme: dark)");
  mq?.addEventListener("change", apply);
  return () => {
    model.off("change:theme", apply);
    observer.disconnect();
    mq?.removeEventListener("change", apply);
  };
}

export function isDark(root: HTMLElement): boolean {
  return root.dataset.cbTheme === "dark";
}
