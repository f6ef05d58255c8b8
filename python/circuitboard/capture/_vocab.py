"""The vocabulary of a saved capture: token texts by id, in place of its tokenizer."""

from __future__ import annotations

from typing import Any


class SavedVocab:
    """What a loaded capture keeps of its tokenizer: every vocabulary entry's text.

    It decodes ids and encodes a string that is exactly one entry's text, enough for analyses
    to name tokens (``' 5'``) and to take one-token targets; it does not tokenize text.

    Examples
    --------
    >>> v = SavedVocab(["a", " 5", " 1"])
    >>> v.decode([1, 2]), v.encode(" 5", add_special_tokens=False), len(v)
    (' 5 1', [1], 3)
    """

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)
        self._ids: dict[str, list[int]] = {}
        for i, t in enumerate(self.texts):
            self._ids.setdefault(t, []).append(i)

    def __len__(self) -> int:
        return len(self.texts)

    def decode(self, ids: Any, **_: Any) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        ids = [ids] if isinstance(ids, int) else ids
        return "".join(self.texts[i] if 0 <= i < len(self.texts) else f"#{i}" for i in ids)

    def batch_decode(self, rows: Any, **_: Any) -> list[str]:
        return [self.decode(r) for r in rows]

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.decode([i])

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The ids of the entries whose text is exactly ``text`` (``[]`` when none): one id
        for a one-token string; it does not tokenize longer text."""
        return list(self._ids.get(text, []))

    def __call__(self, text: str, add_special_tokens: bool = False, **_: Any) -> dict:
        return {"input_ids": self.encode(text)}

    def __repr__(self) -> str:
        return f"SavedVocab({len(self.texts)} token texts)"
