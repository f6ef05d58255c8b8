"""Tokenize prompts and give every token its exact text.

Rules (documented in :func:`circuitboard.capture`):

- With a fast tokenizer, each token's text is the slice of the prompt it came from, using the
  tokenizer's character offsets. Gaps between offsets (e.g. the space that byte-level BPE
  strips from the offsets of ``" world"``) go to the *following* token, and trailing text to
  the last one, so the texts of the non-special tokens join back to the prompt exactly.
- When a byte-level tokenizer splits one multibyte character over several tokens, the
  character is shown once, on the token whose offsets end after it (when several pieces report
  the same span, the last of them), and the other pieces show ``""``; nothing is duplicated.
- Special tokens the tokenizer adds (BOS, ``[CLS]``, ``[SEP]``) are kept, with their token
  string as text (``"<s>"``).
- Generated tokens (and slow tokenizers without offsets) are decoded incrementally:
  ``decode(ids[:i + 1])`` minus ``decode(ids[:i])``; bytes of an unfinished character wait
  for the token that completes it (the earlier pieces show ``""``).
"""

from __future__ import annotations

from typing import Any


def tokenize(tokenizer: Any, prompt: str) -> tuple[list[int], list[str]]:
    """Token ids and exact token texts of ``prompt`` (see the module docstring)."""
    try:
        enc = tokenizer(prompt, return_offsets_mapping=True, return_special_tokens_mask=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        enc = tokenizer(prompt)
        offsets = None
    ids = list(enc["input_ids"])
    if offsets is None:
        return ids, decode_incremental(tokenizer, [], ids)
    special = enc.get("special_tokens_mask") or [0] * len(ids)
    texts = [""] * len(ids)
    prev = 0
    last_real = None
    for i, (_, e) in enumerate(offsets):
        if special[i]:
            texts[i] = tokenizer.convert_ids_to_tokens(ids[i])
            continue
        # A split multibyte character: every piece reports the same span; the last takes it.
        j = i + 1
        while j < len(ids) and special[j]:
            j += 1
        if j < len(ids) and offsets[j][1] == e:
            continue
        texts[i] = prompt[prev:e] if e > prev else ""
        prev = max(prev, e)
        last_real = i
    if last_real is not None and prev < len(prompt):
        texts[last_real] += prompt[prev:]
    return ids, texts


def decode_incremental(tokenizer: Any, context: list[int], ids: list[int]) -> list[str]:
    """Texts of ``ids`` as they appear after ``context`` when the whole is decoded.

    A token that ends inside a multibyte character gets ``""``; the token that completes it
    gets the character.
    """
    ctx = list(context[-8:])

    def dec(x: list[int]) -> str:
        return tokenizer.decode(x, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    texts: list[str] = []
    done = dec(ctx).rstrip("\ufffd")
    cur = stable = done
    for tid in ids:
        ctx.append(tid)
        cur = dec(ctx)
        stable = cur.rstrip("\ufffd")  # bytes of an unfinished character wait for the next token
        texts.append(stable[len(done) :] if stable.startswith(done) else dec([tid]))
        done = stable
        if stable == cur and len(ctx) > 32:
            ctx = ctx[-8:]
            done = dec(ctx).rstrip("\ufffd")
    if texts and cur != stable:  # the text ends inside a character: show what decode shows
        texts[-1] += cur[len(stable) :]
    return texts
