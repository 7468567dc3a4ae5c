"""The benchmark's sample replies: their length in deltas, their shape, and the letters a reader sees of them."""

from __future__ import annotations

import html
import re

import pytest

from chat.streaming.rendering import render_markdown
from tests.fake_upstream import split_deltas
from tests.sample_replies import CODE_BLOCK_LINES, CONTENTS, reply_text, visible_counts

FENCE = re.compile(r"^```", re.MULTILINE)


@pytest.mark.parametrize("content", CONTENTS)
def test_a_reply_has_exactly_the_deltas_asked_for_and_closes_its_code_block(content: str) -> None:
    for tokens in [*range(10, 400, 7), 2000]:
        text = reply_text(content, tokens)
        assert len(split_deltas(text)) == tokens, tokens
        assert len(FENCE.findall(text)) % 2 == 0, tokens


@pytest.mark.parametrize("content", CONTENTS)
def test_a_reply_is_the_same_every_time_and_a_longer_one_starts_as_it_does(content: str) -> None:
    short = reply_text(content, 200)
    assert reply_text(content, 200) == short
    assert reply_text(content, 400).startswith("".join(split_deltas(short)[:-2]))


def test_mixed_repeats_headings_paragraphs_bullets_a_40_line_code_block_and_a_table() -> None:
    text = reply_text("mixed", 2000)
    blocks = re.findall(r"^```python\n(.*?)\n```$", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 3
    assert all(len(block.split("\n")) == CODE_BLOCK_LINES for block in blocks[:-1])
    assert len(re.findall(r"^## \w", text, re.MULTILINE)) >= 3
    assert len(re.findall(r"^- \w", text, re.MULTILINE)) >= 9
    assert len(re.findall(r"^\| setting \| type \| default \|$", text, re.MULTILINE)) >= 3
    assert "**" in text and "`" in text.replace("```", "")


@pytest.mark.parametrize("content", CONTENTS)
def test_no_reply_has_links_images_or_numbered_lists(content: str) -> None:
    text = reply_text(content, 2000)
    assert "](" not in text
    assert not re.search(r"^\s*\d+[.)] ", text, re.MULTILINE)


def test_code_is_one_indented_python_block_the_whole_length() -> None:
    text = reply_text("code", 2000)
    assert text.startswith("```python\n") and text.endswith("\n```")
    assert len(FENCE.findall(text)) == 2
    assert re.search(r"^        \S", text, re.MULTILINE)


def test_prose_is_paragraphs_of_sentences_without_code_blocks() -> None:
    text = reply_text("prose", 400)
    assert "```" not in text
    assert text.count("\n\n") >= 3
    assert "**" in text


def test_an_unknown_content_is_refused() -> None:
    with pytest.raises(ValueError, match="prose, mixed, code"):
        reply_text("poetry", 100)


def test_visible_counts_leave_out_the_fence_info_string() -> None:
    assert visible_counts(["Use ", "this:\n\n", "```python\n", "x = 1\n", "```"]) == [3, 7, 7, 9, 9]


@pytest.mark.parametrize("content", CONTENTS)
def test_the_letters_counted_in_the_source_are_those_of_the_rendered_reply(content: str) -> None:
    """The screen measurement's premise: the final HTML shows every letter and digit of the source but the
    code blocks' info strings, and adds only the code blocks' heads (language label, Copy button)."""
    text = reply_text(content, 600)
    rendered = re.sub(r'<div class="code-head">.*?</div>', "", str(render_markdown(text)))
    shown = html.unescape(re.sub(r"<[^>]+>", "", rendered))
    assert visible_counts(split_deltas(text))[-1] == len(re.findall(r"[A-Za-z0-9]", shown))
