"""Markdown to safe HTML, whole or block by block as it streams: markdown-it-py renders, Pygments highlights,
nh3 sanitises. Model text is untrusted."""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    "button": {"type", "class", "aria-label"},  # our copy button ("Copy code")
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
    # An open fence is shown as plain text while it grows: highlighted once, when it closes.
    lexer = _lexer(language.lower()) if language and env.get("plain") != idx else None
    code = mark_safe(highlight(token.content, lexer, _FORMATTER)) if lexer else token.content  # noqa: S308
    return format_html(
        '<div class="code-block"><div class="code-head"><span class="code-lang">{}</span>'
        '<button type="button" class="copy-code" aria-label="Copy code">Copy</button></div>'
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


def _render(tokens: list[Token], *, open_fence: bool = False) -> str:
    """Sanitised HTML of `tokens`; with `open_fence`, their last fence is still being written: plain text."""
    if not tokens:
        return ""
    md = _markdown()
    env = {}
    if open_fence:
        env["plain"] = max((i for i, token in enumerate(tokens) if token.type == "fence"), default=-1)
    return sanitize(md.renderer.render(tokens, md.options, env))


def render_markdown(text: str) -> SafeString:
    return mark_safe(_render(_markdown().parse(text)))  # noqa: S308 - nh3 output is sanitised HTML


# The open block is rendered again at most this often while markdown syntax arrives in it; between renders
# the page shows the new text as it came (see LiveMarkdown).
RENDER_SECONDS = 0.1
# Renders of the open block may parse at most this many characters beyond twice the reply's length, so
# however a block grows the work stays linear in the reply (and a render sends only what changed).
RENDER_SLACK = 4096
# Characters that can make text render otherwise than as it reads; a line break can start any block.
_SYNTAX = re.compile(r"[\n\r*_`\[\]<>&\\~|#!=]")
_OPENING_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_MAY_GO_ON = re.compile(r" {0,3}(?:[-+*]|\d{1,9}[.)])(?:[ \t]|$)| {2}")  # a list item, or an indented line


@dataclass(frozen=True, slots=True)
class Render:
    """One catch-up of the page: the blocks finished since the last one and the open tail as it is now, as
    the HTML that differs from the tail's last render. Lengths are in UTF-16 code units, as JavaScript counts."""

    same: int  # the length of the last tail render that the new HTML (finished blocks, then tail) starts with
    html: str  # sanitised HTML: the rest of the finished blocks and the tail
    cut: int  # where, in the new HTML, the finished blocks end and the tail starts
    rest: str  # whitespace at the tail's end that its render drops; the page keeps it so words do not run together

    def apply(self, previous: str) -> tuple[str, str]:
        """(finished blocks, tail) in full, given the previous tail render: what the page builds."""
        whole = previous.encode("utf-16-le")[: 2 * self.same] + self.html.encode("utf-16-le")
        return whole[: 2 * self.cut].decode("utf-16-le"), whole[2 * self.cut :].decode("utf-16-le")


class LiveMarkdown:
    """A reply's markdown as it grows: each finished block rendered once, the open block only when it must be.

    Between renders the page appends new text as it arrives to the last block of the open tail (text, never
    HTML), so every token shows at once. The tail is rendered again when that plain text would read
    otherwise than its markdown: a block starts, its first line completes, or a fence opens or closes (at
    once), or markdown syntax arrived (at most every RENDER_SECONDS, within a budget of work linear in the
    reply). An open fenced code block is never rendered again: its text is the code; it is highlighted
    once, when it closes.

    A top-level block is final once a complete blank line ends it (a paragraph, heading, table or quote;
    not a list or indented code, which can go on after one), once a later block has started after a blank
    line and that block's first line is complete (before then `2` may still become `2.`, continuing the
    list above), or once it is a fence whose closing line is complete.
    """

    def __init__(self) -> None:
        self.tail = ""  # source of the blocks not yet frozen
        self.tail_html = ""  # the open blocks' last render, as the page has it
        self.shown = 0  # characters of the tail that the page has as HTML; it has the rest as text
        self.line_start = 0  # offset in the tail of the line not yet complete
        self.after_blank = True  # the last complete line was blank (or there was none): a block may start
        self.block_starts = True  # no text since then
        self.may_go_on = False  # the last non-blank line may belong to a list or indented code
        self.fence: tuple[str, int] | None = None  # the open fence's character and length
        self.urgent = False  # a block started or settled, or a fence opened or closed: render now
        self.dirty = False  # syntax arrived that the page shows as text: render when the cadence allows
        self.rendered_at = float("-inf")
        self.fed = 0  # characters fed in all
        self.work = 0  # characters parsed in all: held within a budget linear in `fed`

    def feed(self, text: str) -> None:
        if not text:
            return
        start = len(self.tail)
        self.tail += text
        self.fed += len(text)
        if self.block_starts and text.strip():
            # A new block's first text: render at once, so it shows in its own element (a paragraph's
            # margins, a heading's size) from its first word, not as bare text that moves when rendered.
            self.urgent, self.block_starts = True, False
        elif self.fence is None and _SYNTAX.search(text):
            self.dirty = True
        if "\n" in text or "\r" in text:
            self._lines(start)

    def _lines(self, start: int) -> None:
        """Look at each line completed since `start`: what it opens or closes decides when to render."""
        tail = self.tail
        for match in _LINE_BREAK.finditer(tail, self.line_start):
            if (
                match.group() == "\n"
                and match.start() == self.line_start
                and tail[match.start() - 1 : match.start()] == "\r"
            ):
                self.line_start = match.end()
                continue  # the \n of a \r\n that came in two pieces: the \r ended that line already
            line = tail[self.line_start : match.start()]
            self.line_start = match.end()
            self._line(line)

    def _line(self, line: str) -> None:
        blank = not line.strip(" \t")
        if self.fence is not None:
            char, size = self.fence
            mark = line.strip(" \t")
            if len(line) - len(line.lstrip(" ")) <= 3 and len(mark) >= size and mark == char * len(mark):
                self.fence, self.urgent = None, True  # closed: highlight it once, now
            return
        if opening := _OPENING_FENCE.fullmatch(line):
            marker, info = opening.groups()
            if not (marker[0] == "`" and "`" in info):
                self.fence, self.urgent = (marker[0], len(marker)), True  # the code block's frame, then its text
        elif self.after_blank and not blank and self.may_go_on:
            self.urgent = True  # a block's first line is complete: the list or indented code before it is final
        if not blank:
            # Only a list or indented code can go on after a blank line (see _last_settled_block); any other
            # block a blank line ends is final then, and is frozen by the next render.
            self.may_go_on = bool(_MAY_GO_ON.match(line))
        self.after_blank = blank
        self.block_starts = blank

    def due(self, now: float) -> bool:
        if self.urgent:
            return self._affordable(4)  # a structural render; bounded too, for a list of a thousand loose items
        return self._cadenced() and now - self.rendered_at >= RENDER_SECONDS

    def render_in(self, now: float) -> float | None:
        """Seconds until a render that waits only for its cadence is due; None if none waits."""
        if self.urgent or not self._cadenced():
            return None
        return max(0.0, self.rendered_at + RENDER_SECONDS - now)

    def _cadenced(self) -> bool:
        """Syntax arrived that the page shows as text, and the budget allows a render for it. (Not in an open
        fence: the page's text is what a render would show; code is highlighted when it closes.)"""
        return self.dirty and self.fence is None and len(self.tail) != self.shown and self._affordable(2)

    def _affordable(self, times: int) -> bool:
        return self.work + len(self.tail) <= times * self.fed + RENDER_SLACK

    def flush(self, *, final: bool = False, now: float = 0.0) -> Render:
        """Render what is due; `final` freezes everything."""
        source = self.tail
        self.work += len(source)
        tokens = _markdown().parse(source)
        cut, offset = (len(tokens), len(source)) if final else _last_settled_block(source, tokens)
        open_fence = not final and self.fence is not None
        frozen, tail = _render(tokens[:cut]), _render(tokens[cut:], open_fence=open_fence)
        # A growing block renders as its last render did up to near its end, and a block is often final as
        # it was last rendered: only the difference is sent.
        html = frozen + tail
        same = _common_prefix(self.tail_html, html)
        self.tail_html = tail
        self.tail = source[offset:]
        self.line_start -= offset
        self.shown = len(self.tail)
        self.urgent = self.dirty = False
        self.rendered_at = now
        rest = "" if open_fence or not tail else self.tail[len(self.tail.rstrip()) :]
        return Render(utf16_length(html[:same]), html[same:], utf16_length(frozen), rest)


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix: a binary search over slice comparisons, each in C."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def utf16_length(text: str) -> int:
    """The length of `text` in UTF-16 code units: a JavaScript string's length."""
    return len(text.encode("utf-16-le")) // 2


# Blocks that a blank line does not end: a list goes on (and turns loose) with an item after one, and an
# indented code block with more indented lines.
_CONTINUED_AFTER_BLANK = frozenset({"bullet_list_open", "ordered_list_open", "code_block"})


def _last_settled_block(source: str, tokens: list[Token]) -> tuple[int, int]:
    """(token index, source offset) where the blocks that nothing later can change end: after the last block
    that a complete blank line or its closing fence ended, or before the last block after a blank line whose
    first line is complete (before then `2` may still become `2.`, continuing the list above it)."""
    starts = [0, *(match.end() for match in _LINE_BREAK.finditer(source))]
    following = len(tokens)  # the index of the top-level block after the one looked at
    for index in range(len(tokens) - 1, -1, -1):
        token = tokens[index]
        if token.level or token.nesting < 0 or not token.map:
            continue
        first, end = token.map
        if token.type == "fence":
            if end < len(starts) and _closes(token, source[starts[end - 1] : starts[end]]):
                return following, starts[end]  # what follows is a new block, blank line or not
        elif token.type not in _CONTINUED_AFTER_BLANK and end + 1 < len(starts):
            if not source[starts[end] : starts[end + 1]].strip(" \t\r\n"):
                return following, starts[end]  # a paragraph, heading, table or quote that a blank line ended
        after_blank = first > 0 and not source[starts[first - 1] : starts[first]].strip(" \t\r\n")
        if after_blank and first + 1 < len(starts):
            return index, starts[first]
        following = index
    return 0, 0


def _closes(fence: Token, line: str) -> bool:
    """Whether `line` (its line break included) is the closing line of `fence`, not a line of its code."""
    mark = line.strip(" \t\r\n")
    indent = len(line) - len(line.lstrip(" "))
    return (
        fence.map is not None
        and fence.map[1] - fence.map[0] >= 2
        and indent <= 3
        and len(mark) >= len(fence.markup)
        and mark == fence.markup[0] * len(mark)
    )
