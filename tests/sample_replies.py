"""Realistic markdown replies of a given length, the same every time: what the simulator streams for the benchmark.

`reply_text(content, tokens)` is `tokens` deltas long when cut by `tests.fake_upstream.split_deltas` (a word and
its trailing whitespace each), for any `tokens` of 10 or more. Three contents:

- prose: paragraphs of plain sentences, now and then a **bold** phrase or `inline code`;
- mixed: units of a heading, a paragraph, a bullet list, a 3-column table, a 40-line Python code block and a
  paragraph, repeated;
- code: one Python code block the whole length.

There are no links, images or numbered lists: the benchmark's screen measurement maps every letter and digit of
the source to the screen (bench/screen.py), and those render text the source does not have or drop text it has.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterator

CONTENTS = ("prose", "mixed", "code")
CODE_BLOCK_LINES = 40
_PIECE_RE = re.compile(r"\S+\s*|\s+")  # tests.fake_upstream.split_deltas, which imports this module

SUBJECTS = [
    "The cache",
    "Each worker",
    "The request handler",
    "This approach",
    "A background job",
    "The database index",
    "Your test suite",
    "The retry loop",
    "The parser",
    "A small wrapper",
    "The connection pool",
    "Every page view",
]
VERBS = [
    "keeps",
    "reduces",
    "needs",
    "avoids",
    "hides",
    "returns",
    "checks",
    "writes",
    "reads",
    "measures",
    "delays",
    "limits",
]
OBJECTS = [
    "the latency of each call",
    "a copy of the settings",
    "the rows it has already seen",
    "most of the slow queries",
    "one connection per thread",
    "the error before the user sees it",
    "a timestamp with every entry",
    "the memory it allocates",
    "the order of the events",
    "enough context to debug it later",
    "the size of the response",
    "a lock around the shared state",
]
CLAUSES = [
    "when the load grows",
    "so that a restart loses nothing",
    "because the network is slow",
    "which makes the logs easier to read",
    "before it hands the result back",
    "unless the value is already cached",
    "as long as the input is small",
    "without blocking the event loop",
    "after the first request arrives",
    "while the other tasks keep running",
]
OPENERS = ["In practice,", "Usually", "In most cases", "On the other hand,", "For example,", "Still,", "Then"]
BOLD = ["at most once", "before the commit", "in production", "on every call", "per request"]
INLINE = ["timeout", "max_retries", "select_related()", "asyncio.gather", "user_id", "settings.DEBUG"]
HEADINGS = [
    "How it works",
    "Why this is faster",
    "Trade-offs",
    "A worked example",
    "What to watch for",
    "Putting it together",
]
TABLE_ROWS = [
    ("timeout", "float", "30 seconds"),
    ("max_retries", "int", "3 attempts"),
    ("pool_size", "int", "20 connections"),
    ("backoff", "float", "0.5 seconds"),
    ("verbose", "bool", "False"),
    ("log_level", "str", "INFO"),
    ("batch_size", "int", "500 rows"),
    ("cache_ttl", "int", "300 seconds"),
]
NAMES = ["orders", "users", "events", "invoices", "sessions", "reports", "messages", "payments"]

# Python a model writes: small functions and classes, indented, with comments and strings; {name} varies.
SNIPPETS = [
    '''def load_{name}(path: str) -> list[dict]:
    """Read {name} from a JSON lines file, skipping blank lines."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            records.append(json.loads(line))
    return records
''',
    """class {title}Cache:
    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._items: dict[str, tuple[float, object]] = {{}}

    def get(self, key: str) -> object | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        stored_at, value = entry
        if time.monotonic() - stored_at > self.ttl:
            del self._items[key]
            return None
        return value

    def put(self, key: str, value: object) -> None:
        self._items[key] = (time.monotonic(), value)
""",
    """async def fetch_{name}(client: httpx.AsyncClient, ids: list[int]) -> dict[int, dict]:
    # One request per id, but never more than ten at once.
    limit = asyncio.Semaphore(10)

    async def one(item_id: int) -> tuple[int, dict]:
        async with limit:
            response = await client.get(f"/api/{name}/{{item_id}}")
            response.raise_for_status()
            return item_id, response.json()

    pairs = await asyncio.gather(*(one(i) for i in ids))
    return dict(pairs)
""",
    """def summarize_{name}(rows: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for row in rows:
        if row.get("status") != "paid":
            continue
        totals[row["currency"]] += float(row["amount"])
    return {{currency: round(total, 2) for currency, total in totals.items()}}
""",
    """def retry(attempts: int = 3, delay: float = 0.5):
    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for attempt in range(attempts):
                try:
                    return func(*args, **kwargs)
                except ConnectionError:
                    if attempt == attempts - 1:
                        raise
                    time.sleep(delay * 2**attempt)
        return wrapper
    return decorator
""",
    """@dataclass
class {title}Filter:
    status: str | None = None
    since: datetime | None = None
    limit: int = 100

    def apply(self, query: QuerySet) -> QuerySet:
        if self.status:
            query = query.filter(status=self.status)
        if self.since is not None:
            query = query.filter(created_at__gte=self.since)
        return query.order_by("-created_at")[: self.limit]
""",
]


def reply_text(content: str, tokens: int) -> str:
    """A `content` reply of `tokens` deltas, ending cleanly (an open code block is closed)."""
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {', '.join(CONTENTS)}, not {content!r}")
    return _reply_text(content, tokens)


@functools.cache
def _reply_text(content: str, tokens: int) -> str:
    # Seeded by the content alone, so a longer reply starts as the shorter one does.
    rng = random.Random(content)
    blocks = {"prose": _prose, "mixed": _mixed, "code": _code}[content](rng)
    text, cut = "", []
    # One delta more than needed, so the last one is whole (its trailing whitespace included).
    while len(cut) <= tokens:
        text += "".join(next(blocks) for _ in range(8))
        cut = _PIECE_RE.findall(text)
    open_fence = sum(1 for line in "".join(cut[:tokens]).splitlines() if line.startswith("```")) % 2 == 1
    if not open_fence:
        return "".join(cut[:tokens]).rstrip()
    # The closing fence is one more delta, so one delta less of the block before it.
    body = "".join(cut[: tokens - 1]).rstrip()
    if sum(1 for line in body.splitlines() if line.startswith("```")) % 2 == 0:
        return body + "\n\nDone."  # the delta dropped was an opening fence: a closing line instead
    return body + "\n```"


def _sentence(rng: random.Random) -> str:
    words = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    if rng.random() < 0.6:
        words += f" {rng.choice(CLAUSES)}"
    if rng.random() < 0.25:
        words = f"{rng.choice(OPENERS)} {words[0].lower()}{words[1:]}"
    roll = rng.random()
    if roll < 0.12:
        words += f", **{rng.choice(BOLD)}**"
    elif roll < 0.24:
        words += f" through `{rng.choice(INLINE)}`"
    return words + "."


def _paragraph(rng: random.Random, fewest: int = 3, most: int = 6) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(fewest, most))) + "\n\n"


def _code_lines(rng: random.Random) -> Iterator[str]:
    while True:
        name = rng.choice(NAMES)
        yield from rng.choice(SNIPPETS).format(name=name, title=name.title()).splitlines()
        yield ""


def _prose(rng: random.Random) -> Iterator[str]:
    while True:
        yield _paragraph(rng)


def _mixed(rng: random.Random) -> Iterator[str]:
    lines = _code_lines(rng)
    # Short prose first, so that even the benchmark's 200-delta reply has every kind of block: a unit is about 300
    # deltas, and its code block starts before the 100th.
    while True:
        yield f"## {rng.choice(HEADINGS)}\n\n"
        yield _paragraph(rng, 2, 3)
        yield "".join(f"- {_sentence(rng)}\n" for _ in range(3)) + "\n"
        rows = rng.sample(TABLE_ROWS, 4)
        yield "| setting | type | default |\n|---|---|---|\n" + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
        code = "\n".join(next(lines) for _ in range(CODE_BLOCK_LINES))
        yield f"\n```python\n{code}\n```\n\n"
        yield _paragraph(rng, 2, 4)


def _code(rng: random.Random) -> Iterator[str]:
    yield "```python\n"
    for line in _code_lines(rng):
        yield line + "\n"


def visible_counts(deltas: list[str]) -> list[int]:
    """For each delta, the letters and digits a reader sees once the reply up to it is on screen: those of the
    source, less a code fence's info string (`python`), which the page shows as a label apart from the text."""
    text = "".join(deltas)
    hidden = [m.span(1) for m in _FENCE_INFO.finditer(text)]
    counts, seen, start = [], 0, 0
    for delta in deltas:
        end = start + len(delta)
        seen += len(_ALNUM.findall(text, start, end))
        seen -= sum(len(_ALNUM.findall(text, max(a, start), min(b, end))) for a, b in hidden if a < end and b > start)
        counts.append(seen)
        start = end
    return counts


_ALNUM = re.compile(r"[A-Za-z0-9]")
_FENCE_INFO = re.compile(r"^ {0,3}```([^\n]*)", re.MULTILINE)
