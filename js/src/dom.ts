// The one DOM helper the views share: elements are built, never parsed from HTML strings.

/** Create `<tag class="cls">`, appended to `parent` when given. */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls: string, parent?: HTMLElement): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  e.className = cls;
  parent?.appendChild(e);
  return e;
}
