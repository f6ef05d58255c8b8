"""Build circuitboard's offline training corpus (python/circuitboard/data/corpus.jsonl.xz).

Sources (Debian bookworm packages; install them first, as root):

    apt-get update && apt-get install -y python3.11-doc bible-kjv wordnet-base

* ``python3.11-doc``: the reST sources of the Python 3.11 documentation (PSF licence):
  technical English with code.
* ``bible-kjv`` (its ``bible`` program reads ``bible-kjv-text``): the King James Version
  (public domain): narrative, archaic English.
* ``wordnet-base``: WordNet 3.0 synset words and glosses (WordNet licence, permissive with
  attribution): definitions of everyday vocabulary (every third synset).

Each line of the output is one JSON document ``{"id", "source", "text"}``; documents are
sorted by id, so rebuilding gives the same bytes. Run: ``python scripts/build_corpus.py``.
"""

from __future__ import annotations

import json
import lzma
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "python" / "circuitboard" / "data" / "corpus.jsonl.xz"
PY_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
WORDNET = Path("/usr/share/wordnet")
CHUNK = 3000  # characters per document (about 700 tokens), cut at blank lines


def chunks(text: str, size: int = CHUNK) -> list[str]:
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        if cur and len(cur) + len(para) + 2 > size:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur.strip():
        out.append(cur)
    return out


def python_docs() -> list[dict]:
    docs = []
    for p in sorted(PY_DOCS.rglob("*.txt")):
        rel = p.relative_to(PY_DOCS).as_posix()
        if rel.startswith("whatsnew/changelog"):
            continue  # a long list of issue numbers, not prose
        for i, text in enumerate(chunks(p.read_text(encoding="utf-8", errors="replace"))):
            docs.append({"id": f"python-docs/{rel}#{i}", "source": "python-docs", "text": text})
    return docs


def bible() -> list[dict]:
    raw = subprocess.run(
        ["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    chapters: dict[tuple[str, int], list[str]] = {}
    order: list[tuple[str, int]] = []
    for line in raw.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line.strip())
        if not m:
            continue
        key = (m.group(1), int(m.group(2)))
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        chapters[key].append(m.group(4).strip())
    docs = []
    for n, key in enumerate(order):
        text = " ".join(chapters[key])
        docs.append({"id": f"bible/{n:04d}-{key[0]}{key[1]}", "source": "bible", "text": text})
    return docs


def wordnet(group: int = 40, every: int = 3) -> list[dict]:
    lines = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET / f"data.{pos}").read_text(encoding="utf-8").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            head, gloss = line.split("|", 1)
            f = head.split()
            n_words = int(f[3], 16)
            words = [f[4 + 2 * i].replace("_", " ") for i in range(n_words)]
            words = [re.sub(r"\(\w+\)$", "", w) for w in words]
            lines.append((pos, f"{', '.join(words)}: {gloss.strip()}"))
    lines = lines[::every]  # a third of the synsets keeps definitions from outweighing prose
    docs = []
    for pos in ("noun", "verb", "adj", "adv"):
        mine = [t for p, t in lines if p == pos]
        for i in range(0, len(mine), group):
            docs.append(
                {
                    "id": f"wordnet/{pos}-{i // group:05d}",
                    "source": "wordnet",
                    "text": "\n".join(mine[i : i + group]),
                }
            )
    return docs


def main() -> None:
    docs = sorted(python_docs() + bible() + wordnet(), key=lambda d: d["id"])
    body = "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs)
    OUT.write_bytes(lzma.compress(body.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    by: dict[str, int] = {}
    for d in docs:
        by[d["source"]] = by.get(d["source"], 0) + len(d["text"])
    print(f"{len(docs)} documents, {by} characters, {OUT.stat().st_size / 1e6:.2f} MB -> {OUT}")


if __name__ == "__main__":
    main()
