"""GenerationView in an exported page (offline): scrub, forks, linked attention, hostile text."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

import circuitboard as cb
from tests.conftest import open_report
from tests.hostile import HOSTILE_TOKENS, shown

PROMPT = "When Mary and John went to the store"
STEPS = 6


def visible(t: str) -> str:
    """What generation.ts shows for a token (lens.ts' visible())."""
    s = t.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
    return s.replace(" ", "␣") if s != "" and s.strip() == "" else s


class HostileTokenizer:
    """The tiny tokenizer, except that every decoded token is a hostile string."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    def decode(self, ids: Any, **kwargs: Any) -> str:
        return HOSTILE_TOKENS[int(ids[0]) % len(HOSTILE_TOKENS)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def hostile(gen: Any, offset: int) -> Any:
    texts = [HOSTILE_TOKENS[(offset + i) % len(HOSTILE_TOKENS)] for i in range(gen.n_steps)]
    cap = dataclasses.replace(
        gen.capture,
        tokens=list(gen.capture.tokens[: gen.n_prompt]) + texts,
        tokenizer=HostileTokenizer(gen.capture.tokenizer),
    )
    return dataclasses.replace(gen, tokens=texts, capture=cap)


@functools.cache
def built() -> dict[str, Any]:
    from tests.unit.tiny_models import tiny_llama

    model, tok = tiny_llama()
    gen = cb.generate(model, tok, PROMPT, max_new_tokens=STEPS, stop_at_eos=False)
    v = torch.zeros(model.config.hidden_size)
    v[:4] = 30.0
    fork = gen.fork(2, steer=v, layer=1)
    return {"gen": gen, "fork": fork}


def test_generation_view_in_a_report(page, tmp_path, artifacts):
    gen, fork = built()["gen"], built()["fork"]
    diff = [a != b for a, b in zip(gen.token_ids, fork.token_ids, strict=True)]
    assert any(diff) and not any(diff[:2])
    view = cb.generation_view(gen, fork, k=5)
    att = cb.attention(gen.capture)
    cb.link(view, att)
    path = cb.report(view, att, path=tmp_path / "gen.html", title="Generation")
    open_report(page, path)
    root = page.locator(".cb-gen")
    page.wait_for_selector(".cb-gen[data-step-ready=true]")
    assert root.get_attribute("data-rows") == "2"
    # fork rows: parallel cells, differing tokens highlighted, shared prefix muted, a KL strip
    row1 = page.locator('.cb-gen-tok[data-row="1"]')
    assert row1.count() == STEPS
    flags = [("cb-gen-diff" in (row1.nth(s).get_attribute("class") or "")) for s in range(STEPS)]
    assert flags == diff
    assert page.locator('.cb-gen-tok[data-row="1"].cb-gen-shared').count() == 2
    kl = page.locator('.cb-gen-kl[data-row="1"]')
    assert kl.count() == STEPS and "0.0000" in (kl.nth(0).get_attribute("title") or "")
    n = gen.n_prompt

    def linked_token() -> str:
        return page.locator(".cb-attention").get_attribute("data-token") or ""

    # click a step of the fork row: the view, its attention panel and the linked view follow
    row1.nth(3).click()
    page.wait_for_selector('.cb-gen[data-step="3"][data-row="1"][data-step-ready=true]')
    assert page.locator(".cb-gen-attn").get_attribute("data-query") == str(n + 2)
    assert linked_token() == str(n + 2)
    assert page.locator(".cb-gen-top .cb-gen-h").text_content() == "Next token at step 3"
    assert page.locator(".cb-gen-lensrow").count() == gen.capture.info.n_layers
    # keyboard scrubbing
    root.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_selector('.cb-gen[data-step="4"][data-step-ready=true]')
    assert linked_token() == str(n + 3)
    # the scrubber
    page.evaluate(
        """() => { const s = document.querySelector('.cb-gen-scrub'); s.value = '1';
        s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); }"""
    )
    page.wait_for_selector('.cb-gen[data-step="1"][data-step-ready=true]')
    assert linked_token() == str(n)
    # the head: picked here, the attention view follows; picked there, this panel follows
    page.select_option('.cb-gen-attn select[aria-label="head"]', "2")
    page.wait_for_selector('.cb-attention[data-head="2"]')
    page.locator(".cb-attention .cb-thumb").first.click()  # layer 0, head 0
    page.wait_for_selector('.cb-gen-attn[data-head="0"][data-layer="0"]')
    # a token clicked in the attention view selects the step whose query it is
    page.locator(".cb-attention .cb-token").nth(n + 1).click()
    page.wait_for_selector('.cb-gen[data-step="2"]')
    # the attribution of the step sums to the logit
    note = page.locator(".cb-gen-dla .cb-gen-note").text_content() or ""
    assert note.startswith("logit ") and "components" in note
    root.screenshot(path=str(artifacts / "generation_view_browser.png"))
    assert page.cb_errors == [] and page.cb_blocked == []


def test_hostile_tokens_stay_text(page, tmp_path):
    gen, fork = built()["gen"], built()["fork"]
    bad_gen, bad_fork = hostile(gen, 0), hostile(fork, 7)
    view = cb.generation_view(bad_gen, bad_fork, k=5)
    path = cb.report(view, path=tmp_path / "hostile.html", title="Hostile")
    open_report(page, path)
    page.wait_for_selector(".cb-gen[data-step-ready=true]")
    cells = page.locator('.cb-gen-tok[data-row="0"]')
    for s in range(STEPS):
        assert cells.nth(s).text_content() == visible(shown(bad_gen.tokens[s]))
    tops = page.locator(".cb-gen-top .cb-gen-text").all_text_contents()
    assert tops and all(t in {visible(shown(h)) for h in HOSTILE_TOKENS} for t in tops)
    lens = page.locator(".cb-gen-lenscell").all_text_contents()
    assert lens and all(t in {visible(shown(h)) for h in HOSTILE_TOKENS} for t in lens)
    page.locator('.cb-gen-tok[data-row="1"]').nth(4).click()
    page.wait_for_selector('.cb-gen[data-step="4"][data-row="1"][data-step-ready=true]')
    assert page.evaluate("() => window.__pwned === undefined")
    injected = "img, svg, iframe, b, object, embed, #cb-report style, #cb-report script"
    assert page.evaluate(f"() => document.querySelectorAll({injected!r}).length") == 0
    assert page.cb_errors == []
