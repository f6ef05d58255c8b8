// Shapes shared by the views: encoded tensors, the selection, the fetch protocol.
import type { AnyModel } from "@anywidget/types";

export type EncodedDtype = "uint8" | "float16" | "float32";

/** A tensor as the kernel sends it; `data` is bytes (DataView in Jupyter) or a buffer index. */
export interface Encoded {
  dtype: EncodedDtype;
  shape: number[];
  lo: number;
  scale: number;
  data: DataView | ArrayBuffer | Uint8Array | number;
  /** Only the lower triangle (diagonal included) of each matrix in the last two dims is stored. */
  tril?: boolean;
  /** uint8 only: the code that marks NaN / ±inf (finite values then use 0..254). */
  nonfinite?: number;
}

export interface Tensor {
  shape: number[];
  data: Float32Array;
}

export interface Selection {
  layer: number | null;
  head: number | null;
  token: number | null;
  neuron: number | null;
  prompt: number;
  hover_token: number | null;
  /** The hook the selected feature's dictionary reads, e.g. "blocks.12.hook_resid_post". */
  dictionary?: string | null;
  /** The selected dictionary feature (index within `dictionary`). */
  feature?: number | null;
}

export type LinkModel = AnyModel<Selection>;

export interface Reply {
  kind: "reply";
  id: number;
  ok: boolean;
  error?: string;
  [field: string]: unknown;
}
