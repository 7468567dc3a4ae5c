"""Markdown to safe HTML, whole or block by block as it streams: markdown-it-py renders, Pygments highlights,
nh3 sanitises. Model text is untrusted."""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Any

import nh3
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
    "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "a", "span", "div", "button",
}  # fmt: skip
# No <img>: a remote image would load in the reader's browser and could carry data out in its URL.
# No style attributes: the Content-Security-Policy forbids inline styles, so alignment is a class.
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "class"},
    "span": {"class"},
    "div": {"class"},
    "code": {"class"},
    "pre": {"class"},
    "th": {"class"},
    "td": {"class"},
    "ol": {"start"},
    "button": {"type", "class"},
}
_FORMATTER = HtmlFormatter(nowrap=True)
_LANGUAGE = re.compile(r"[\w+#.-]{1,40}")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@lru_cache(maxsize=64)
def _lexer(language: str) -> Lexer | None:
    try:
        return get_lexer_by_name(language)
    except ClassNotFound:
        return None


def _code_block(self: Any, tokens: list[Token], idx: int, options: Any, env: Any) -> str:
    """A code block with its language and a copy button; highlighted when Pygments knows the language."""
    token = tokens[idx]
    info = token.info.strip().split(maxsplit=1)
    language = info[0] if info and _LANGUAGE.fullmatch(info[0]) else ""
    lexer = _lexer(language.lower()) if language else None
    code = mark_safe(highlight(token.content, lexer, _FORMATTER)) if lexer else token.content  # noqa: S308
    return format_html(
        '<div class="code-block"><div class="code-head"><span class="code-lang">{}</span>'
        '<button type="button" class="copy-code">Copy</button></div>'
        "<pre>{}</pre></div>\n",
        language or "text",
        format_html('<code class="language-{}">{}</code>', language, code)
        if language
        else format_html("<code>{}</code>", code),
    )


def _image_as_link(self: Any, tokens: list[Token], idx: int, options: Any, env: Any) -> str:
    # Never an <img>: the reader chooses whether to follow it, so nothing is fetched behind their back.
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    return format_html('<a href="{}" class="image-link">Image: {}</a>', token.attrGet("src") or "", alt or "untitled")


def _alignment_classes(state: StateCore) -> None:
    for token in state.tokens:
        if token.type in ("th_open", "td_open") and (style := token.attrGet("style")):
            del token.attrs["style"]
            token.attrSet("class", "align-" + str(style).partition(":")[2])


@cache
def _markdown() -> MarkdownIt:
    # html=False: raw HTML in model output is shown as text, never parsed as markup. No reference
    # definitions: a `[x]: url` line could change how an earlier, already-streamed block renders.
    md = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough").disable("reference")
    md.add_render_rule("fence", _code_block)
    md.add_render_rule("code_block", _code_block)
    md.add_render_rule("image", _image_as_link)
    md.core.ruler.push("alignment_classes", _alignment_classes)
    return md


# Built once: nh3.clean() converts these sets to Rust on every call, which was a quarter of its cost
# on a reply's tail, re-sanitised many times a second while it streams.
_CLEANER = nh3.Cleaner(
    tags=ALLOWED_TAGS,
    attributes=ALLOWED_ATTRIBUTES,
    url_schemes={"http", "https", "mailto"},
    link_rel="noopener noreferrer nofollow",
    set_tag_attribute_values={"a": {"target": "_blank"}},
)


def sanitize(html: str) -> str:
    return _CLEANER.clean(html)


def _render(tokens: list[Token]) -> str:
    md = _markdown()
    return sanitize(md.renderer.render(tokens, md.options, {})) if tokens else ""


def render_markdown(text: str) -> SafeString:
    return mark_safe(_render(_markdown().parse(text)))  # noqa: S308 - nh3 output is sanitised HTML


class LiveMarkdown:
    """A reply's markdown as it grows: each finished block is rendered once, only the open tail again.

    A top-level block is final once a later block has started after a blank line and that block's
    first line is complete (before then `2` may still become `2.`, continuing the list above). The
    tail is re-rendered only when it has grown by 1/`budget` of its length since the last render, so
    the total rendering work stays within `budget` times the reply's length however long a block is.
    """

    def __init__(self, *, budget: int = 32) -> None:
        self.budget = budget
        self.tail = ""  # source of the blocks not yet frozen
        self.fresh = 0  # characters added since the tail was last rendered
        self.work = 0  # characters parsed so far, for measuring

    def feed(self, text: str) -> None:
        self.tail += text
        self.fresh += len(text)

    def due(self) -> bool:
        return self.fresh > 0 and len(self.tail) <= self.budget * self.fresh

    def flush(self, *, final: bool = False) -> tuple[str, str]:
        """(HTML of the blocks finished since the last flush, HTML of the open tail); final freezes all."""
        source, self.fresh = self.tail, 0
        self.work += len(source)
        tokens = _markdown().parse(source)
        cut, offset = (len(tokens), len(source)) if final else _last_settled_block(source, tokens)
        self.tail = source[offset:]
        return _render(tokens[:cut]), _render(tokens[cut:])


def _last_settled_block(source: str, tokens: list[Token]) -> tuple[int, int]:
    """(token index, source offset) of the start of the last block that nothing later can merge with."""
    starts = [0, *(match.end() for match in _LINE_BREAK.finditer(source))]
    for index in range(len(tokens) - 1, 0, -1):
        token = tokens[index]
        if token.level or token.nesting < 0 or not token.map:
            continue
        line = token.map[0]
        after_blank = line > 0 and not source[starts[line - 1] : starts[line]].strip(" \t\r\n")
        if after_blank and line + 1 < len(starts):
            return index, starts[line]
    return 0, 0
