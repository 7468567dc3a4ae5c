"""bench/RESULTS.md: when, on what, with which command, the table, the capacity found and the targets."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime
from importlib import metadata

from bench import procs
from bench.cell import Setting, direct_readers
from bench.load import QUESTION
from bench.report import EXTRA_EVENTS_PER_REPLY, SERVER_LABELS, Cell, category_table, fmt, profile_table, table
from bench.targets import contents_of, find, targets

PACKAGES = [
    "Django",
    "daphne",
    "Twisted",
    "uvicorn",
    "httpx",
    "httpx-aiohttp",
    "aiohttp",
    "httpcore",
    "asgiref",
    "psycopg",
    "psycopg-pool",
    "uvloop",
]


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(found)


def code_state() -> str:
    """The commit measured, and whether the working tree had changes on top of it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=procs.ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=procs.ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or b <= 0 else f"{a / b:.2f}"


def reference_section(cells: list[Cell]) -> list[str]:
    """streamchat beside the bare relay at each C both ran, in the same run."""
    pairs = [
        (app, bare)
        for bare in cells
        if bare.server == "bare" and not bare.variant
        if (app := find(cells, "daphne", bare.interval, bare.concurrency, bare.content)) is not None
    ]
    if not pairs:
        return []
    lines = [
        "## Against a bare Django relay (the reference, same run)\n",
        "`bench/bare.py` is one async Django view that streams the simulator's reply to the browser through the "
        "same httpx client and transport, under daphne on the same core: no session, database, parsing, "
        "rendering or middleware. It is the floor for a Django view on daphne with this client on this machine: "
        "where it misses a target, streamchat, which does strictly more per reply, cannot meet it here; the "
        "ratios say what streamchat's own work costs on top.\n",
        "| content | C (20 ms) | added TTFT p50 / p99, streamchat | bare relay | CPU µs/event, streamchat "
        "| bare relay | ratio | KiB/stream, streamchat | bare relay | ratio | threads, streamchat / bare "
        "| KiB/reply, streamchat / bare |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for app, bare in pairs:
        a, b = app.ttft, bare.ttft
        lines.append(
            f"| {app.content} | {app.concurrency} | {fmt(a.get('added_p50'), 1)} / {fmt(a.get('added_p99'), 1)} "
            f"| {fmt(b.get('added_p50'), 1)} / {fmt(b.get('added_p99'), 1)} "
            f"| {fmt(app.cpu_us_per_event, 1)} | {fmt(bare.cpu_us_per_event, 1)} "
            f"| {ratio(app.cpu_us_per_event, bare.cpu_us_per_event)} "
            f"| {app.kib_per_stream:.1f} | {bare.kib_per_stream:.1f} "
            f"| {ratio(app.kib_per_stream, bare.kib_per_stream)} "
            f"| {app.threads} / {bare.threads} "
            f"| {fmt(kib(app.reply_bytes), 1)} / {fmt(kib(bare.reply_bytes), 1)} |"
        )
    return [*lines, ""]


def kib(size: float | None) -> float | None:
    return None if size is None else size / 1024


def replies(cells: list[Cell], setting: Setting) -> str:
    """What the simulator streams, for the Workload line."""
    contents = contents_of(cells) or ["plain"]
    named = {
        "plain": '"tok0 tok1 ..." (plain)',
        "prose": "prose (paragraphs with some bold and inline code)",
        "mixed": "mixed (headings, paragraphs, bullet lists, tables, 40-line Python blocks)",
        "code": "code (one Python block)",
    }
    main, others = contents[0], contents[1:]
    text = f"{setting.tokens} deltas per reply (+4 other upstream events) of {named.get(main, main)}"
    if others:
        text += "; also " + ", ".join(named.get(c, c) for c in others) + " at C=1, 10, 100 and the bare relay at 100"
    return text + " (`tests/sample_replies.py`)"


def asked(setting: Setting) -> str:
    """What every user sends, for the Workload line."""
    if not setting.question_chars:
        return f"every question `{QUESTION}` ({len(QUESTION)} characters)"
    return (
        f"every question padded to {setting.question_chars:,} characters of prose (`--question-chars "
        f"{setting.question_chars}`, a pasted document), and the direct readers' request carries one as long"
    )


def document(
    *,
    cells: list[Cell],
    capacities: dict[str, tuple[int, int | None, list[Cell]]],
    command: str,
    db: str,
    setting: Setting,
    elapsed: float,
    skipped: list[str],
    when: datetime,
    code: str | None = None,
) -> str:
    box = procs.machine()
    parts = [
        "# streamchat benchmark results\n",
        f"- **Date:** {when:%Y-%m-%d %H:%M} UTC; the run took {elapsed / 60:.1f} min.",
        f"- **Command:** `{command}`",
        f"- **Machine:** {box['cores']} cores ({box['cpu']}), {box['memory']} memory; shared with other work, "
        f"so read single numbers with care. Relay process pinned to core {procs.SERVER_CORE} (`taskset`), "
        f"simulator and load generator on core {procs.LOAD_CORE}; the database server is not pinned.",
        f"- **Versions:** {versions()}; database {db}. Code: {code or code_state()}.",
        f"- **Workload:** {replies(cells, setting)}, simulated TTFT "
        f"{setting.ttft * 1000:g} ms, OpenAI wire format from `tests/fake_upstream.py`; {asked(setting)}; "
        "production settings (DEBUG off); each cell starts a fresh server process.",
        "- **Load:** C logged-in users, each in a closed loop of POST send → GET the reply's stream → read to "
        "`done`; first starts spread over one reply length, measured over a steady-state window after it. "
        "At the same moments direct readers "
        f"(C up to 10, then max(10, {setting.direct_share:g}·C)) read the same simulated replies straight from "
        "the simulator, interleaved with the app's conversations, so noise hits both alike.",
        "",
        "Columns:",
        "",
        "- *TTFT app*: from the stream GET to the first chunk carrying a token; *direct*: the same for a request "
        "straight to the simulator; **added** = app − direct at the same percentile (the stream request alone, as "
        "the reference relays measure it). *POST send*: the send request before it; *user-seen added* = "
        "(POST + stream TTFT) − direct, what a person waits beyond the model.",
        "- *gap p99 added*: p99 of the time between token-carrying chunks, app − direct.",
        "- *errors*: failed app conversations / started (non-200, error event, no `done`, text incomplete, timeout).",
        "- *replies/s*, *upstream ev/s*: completed in the window; 204 upstream SSE events per reply.",
        "- *CPU µs/event*: relay-process CPU in the window / upstream events (at low C it is mostly the cost of "
        "waking up, which is high in this VM). *server CPU*: share of its core.",
        "- *KiB/stream*: (peak RSS − RSS after warm-up) / C (noise at C ≤ 10). *threads / DB conns*: peaks.",
        "- *DB rows/reply*: rows inserted or updated in chat_message per reply (with chat_conversation in "
        "brackets), from pg_stat_user_tables.",
        "- *load-core CPU*: simulator + load generator on their core; *other CPU*: everything else on the machine "
        "(PostgreSQL, and other people's work on this shared box), in cores.",
        "- *KiB/reply*: median bytes of the reply's stream body (SSE, as the browser receives it) per completed "
        "reply; in brackets, that as a multiple of the reply's final HTML (`render_markdown` of its text).",
        "",
        table(cells),
    ]
    if capacities:
        parts.append("## Capacity search (20 ms, zero errors and p99 added TTFT ≤ 100 ms)\n")
        for server, (lo, hi, probes) in capacities.items():
            tried = ", ".join(
                f"C={p.concurrency}: {'pass' if p.passes else 'fail'} "
                f"(p99 added {fmt(p.ttft.get('added_p99'), 0)} ms, {p.errors} errors)"
                for p in probes
            )
            fails = f", fails at {hi}" if hi else ""
            parts.append(
                f"- **{SERVER_LABELS.get(server, server)}: {lo}**{fails}" + (f"; probes {tried}" if tried else "")
            )
        probe_cells = [p for _, _, probes in capacities.values() for p in probes]
        if probe_cells:
            parts += ["", table(probe_cells)]
    parts += ["## Targets (daphne, 20 ms unless said)\n", *targets(cells, capacities, setting), ""]
    parts += reference_section(cells)
    failing = [c for c in cells if c.error_kinds]
    if failing:
        parts.append("## Errors by kind\n")
        for c in failing:
            kinds = ", ".join(f"{k} ×{n}" for k, n in sorted(c.error_kinds.items()))
            if c.refused_ms:
                kinds += (
                    f"; the 503s came back in p50 {fmt(c.refused_ms['p50'], 1)} / p99 {fmt(c.refused_ms['p99'], 1)} ms"
                )
            parts.append(f"- {c.server} {c.interval * 1000:g} ms C={c.concurrency}: {kinds}")
        parts.append("")
    for c in [c for c in cells if c.profile]:
        per_reply = (
            c.cpu_us_per_event * (setting.tokens + EXTRA_EVENTS_PER_REPLY) / 1000 if c.cpu_us_per_event else None
        )
        parts += [
            f"## Profile: {c.server} {c.interval * 1000:g} ms C={c.concurrency}\n",
            "py-spy (`--gil --nonblocking`, 200 Hz) on the relay process during the window; a sample counts for the "
            "first category whose code is on its stack (see `bench/profile.py`).\n",
            category_table(c.profile_categories, cpu_ms_per_reply=per_reply),
            "Top frames by own time:\n",
            profile_table(c.profile),
            "",
        ]
    if skipped:
        parts.append("Skipped for the time budget: " + ", ".join(skipped) + "\n")
    direct = {c: direct_readers(setting, c) for c in sorted({c.concurrency for c in cells})}
    parts.append("Direct readers per C: " + ", ".join(f"{c}: {d}" for c, d in direct.items()) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """python -m bench.results --from RUN.json: rewrite the Markdown of a finished run from its raw numbers."""
    import argparse
    import json
    import sys
    from datetime import datetime
    from pathlib import Path

    from bench.cell import Setting

    parser = argparse.ArgumentParser(prog="python -m bench.results", description=main.__doc__)
    parser.add_argument("--from", dest="source", required=True, help="bench/out/results-*.json of the run")
    parser.add_argument("--profile-from", help="take the profiled cell of this other run (named in the output)")
    parser.add_argument("--command", help="the run's command, for runs whose JSON predates recording it")
    parser.add_argument("--elapsed", type=float, help="the run's seconds, likewise")
    parser.add_argument("--code", help="the code the run measured, for runs whose JSON predates recording it")
    parser.add_argument("--note", default="", help="a line to add at the end")
    parser.add_argument("--output", default=str(procs.ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args(argv)
    run = json.loads(Path(args.source).read_text())
    cells = [Cell(**c) for c in run["cells"]]
    capacities = {server: (lo, hi, [Cell(**p) for p in probes]) for server, (lo, hi, probes) in run["capacity"].items()}
    note = ""
    if args.profile_from:
        other = json.loads(Path(args.profile_from).read_text())
        profiled = [Cell(**c) for c in other["cells"] if c["profile"] and not c.get("variant")]
        for cell in profiled:
            cell.variant = "profiled run"
        cells += profiled
        note = (
            "The row marked *profiled run* and the profile come from a second run "
            f"({args.note or other.get('command')}), with py-spy attached; its other rows (a noisier machine) "
            "are in its JSON in bench/out/."
        )
    stamp = Path(args.source).stem.removeprefix("results-")
    when = datetime.fromisoformat(run["when"]) if "when" in run else datetime.strptime(stamp, "%Y%m%dT%H%M%S")
    given = run.get("setting", {})
    setting = Setting(
        tokens=given.get("tokens", 200),
        ttft=given.get("ttft", 0.05),
        quick=False,
        env={},
        users=[],
        direct_share=given.get("direct_share", 0.25),
        question_chars=given.get("question_chars", 0),  # runs before the option asked the short question
    )
    from bench.database import server_version, setup_django

    setup_django({"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/streamchat_bench", "SECRET_KEY": "x"})
    text = document(
        cells=cells,
        capacities=capacities,
        command=run.get("command") or args.command or "?",
        db=server_version(),
        setting=setting,
        elapsed=run.get("elapsed") or args.elapsed or 0.0,
        skipped=run.get("skipped", []),
        when=when,
        code=run.get("code") or args.code,
    )
    Path(args.output).write_text(text + (f"\n{note}\n" if note else ""))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
