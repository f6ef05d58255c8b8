"""`ModelSpec`: a picklable description from which each worker loads its own model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT = "default"


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    return str(dtype).removeprefix("torch.")  # torch.float16 -> "float16": no torch needed


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how to load it, so that every worker loads its own copy.

    Pass it to :func:`circuitboard.compare`, :func:`circuitboard.top_activations`,
    :func:`circuitboard.patch` or :func:`circuitboard.circuit` in place of a loaded model (with
    ``tokenizer=None``); each worker of the ``"processes"`` or ``"ray"``
    engine loads the model once and keeps it for every shard it runs. The spec is a few strings,
    so it pickles and travels to other machines; nothing is loaded until :meth:`load`.

    Parameters
    ----------
    name_or_path
        ``"default"`` (the embedded SmolLM2-135M-Instruct, :func:`circuitboard.load_default_model`),
        a Hugging Face model name or a local folder written by ``save_pretrained``.
    dtype
        ``"float32"`` (default), ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
    device
        Where the model goes after loading (``"cuda"``, ``"cpu"``); default: ``"cuda"`` when the
        worker was given a GPU, else the CPU. Ignored with ``device_map``.
    device_map
        Passed to ``from_pretrained`` (``"auto"`` spreads a model larger than one GPU over every
        GPU the worker holds; give the worker several with ``gpus_per_worker=``).
    gpus
        GPUs each worker holds (the engines' ``gpus_per_worker=`` overrides it).
    threads
        Torch CPU threads per worker (default: the machine's cores divided among its workers).
    tokenizer
        Tokenizer name or path when it differs from ``name_or_path``.
    **load_kwargs
        Anything else for ``from_pretrained`` (``revision=``, ``attn_implementation=``,
        ``trust_remote_code=``, ...).

    Examples
    --------
    >>> spec = ModelSpec("default")
    >>> spec
    ModelSpec('default')
    >>> ModelSpec("/models/llama", dtype="bfloat16", device_map="auto", gpus=4)
    ModelSpec('/models/llama', dtype='bfloat16', device_map='auto', gpus=4)
    >>> import pickle; pickle.loads(pickle.dumps(spec)) == spec
    True
    """

    name_or_path: str = DEFAULT
    dtype: Any = None
    device: str | None = None
    device_map: Any = None
    gpus: float = 0
    threads: int | None = None
    tokenizer: str | None = None
    load_kwargs: dict[str, Any] = field(default_factory=dict)

    def __init__(
        self,
        name_or_path: str = DEFAULT,
        *,
        dtype: Any = None,
        device: str | None = None,
        device_map: Any = None,
        gpus: float = 0,
        threads: int | None = None,
        tokenizer: str | None = None,
        **load_kwargs: Any,
    ) -> None:
        if not isinstance(name_or_path, str) or not name_or_path:
            raise TypeError(
                f"ModelSpec needs a model name or path (a non-empty string); got {name_or_path!r}. "
                'Use ModelSpec("default") for the embedded model, a Hugging Face name, or a '
                "folder written by model.save_pretrained()."
            )
        if not isinstance(gpus, (int, float)) or isinstance(gpus, bool) or gpus < 0:
            raise ValueError(f"gpus must be a number >= 0; got {gpus!r}.")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None; got {threads!r}.")
        set_ = object.__setattr__  # frozen dataclass: assign once here
        set_(self, "name_or_path", name_or_path)
        set_(self, "dtype", _dtype_name(dtype))
        set_(self, "device", device)
        set_(self, "device_map", device_map)
        set_(self, "gpus", gpus)
        set_(self, "threads", threads)
        set_(self, "tokenizer", tokenizer)
        set_(self, "load_kwargs", dict(load_kwargs))

    def __repr__(self) -> str:
        parts = [repr(self.name_or_path)]
        for key in ("dtype", "device", "device_map", "gpus", "threads", "tokenizer"):
            value = getattr(self, key)
            if value not in (None, 0):
                parts.append(f"{key}={value!r}")
        parts += [f"{k}={v!r}" for k, v in sorted(self.load_kwargs.items())]
        return f"ModelSpec({', '.join(parts)})"

    def __hash__(self) -> int:
        return hash(repr(self))

    def _torch_dtype(self) -> Any:
        import torch

        if self.dtype is None:
            return torch.float32
        dt = getattr(torch, str(self.dtype), None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(
                f"ModelSpec dtype={self.dtype!r} is not a torch dtype; use 'float32', "
                "'bfloat16' or 'float16'."
            )
        return dt

    def load_tokenizer(self) -> Any:
        """The tokenizer alone (what the driver needs to plan; cheap)."""
        if self.name_or_path == DEFAULT and self.tokenizer is None:
            from ..models._default import CACHE_NAME, default_cache_dir

            cached = default_cache_dir() / CACHE_NAME
            if not (cached / "config.json").is_file():  # first use: convert, then read
                return self.load()[1]
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(cached))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer or self.name_or_path)

    def load(self, gpus: float | None = None) -> tuple[Any, Any]:
        """Load ``(model, tokenizer)`` in eval mode on this worker.

        ``gpus`` is what the worker holds (default :attr:`gpus`); with one or more and no
        ``device`` / ``device_map`` the model goes to ``"cuda"``.
        """
        import torch

        held = self.gpus if gpus is None else gpus
        device = self.device
        if device is None and self.device_map is None and held and torch.cuda.is_available():
            device = "cuda"
        dtype = self._torch_dtype()
        if self.name_or_path == DEFAULT:
            if self.load_kwargs or self.device_map is not None:
                raise ValueError(
                    "the embedded default model takes only dtype= and device=; got "
                    f"{sorted(self.load_kwargs) + (['device_map'] if self.device_map else [])}. "
                    "Use a Hugging Face name or path for other loading options."
                )
            from ..models import load_default_model

            return load_default_model(dtype=dtype, device=device)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = dict(self.load_kwargs)
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        model = AutoModelForCausalLM.from_pretrained(self.name_or_path, dtype=dtype, **kwargs)
        if device and self.device_map is None:
            model.to(device)
        model.eval()
        tok = AutoTokenizer.from_pretrained(self.tokenizer or self.name_or_path)
        return model, tok
