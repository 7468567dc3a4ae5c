"""The processes a run starts (simulator, app servers, profiler), pinned to their cores, and what /proc says of them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# The relay gets a core of its own; the simulator and the load generator share the other.
SERVER_CORE, LOAD_CORE = "0", "1"


def measure_checkout(
    script: Path, app_dir: Path, args: list[str], env: dict[str, str], *, wrapper: Sequence[str] = ()
) -> dict[str, float]:
    """Runs a bench module as a script against app_dir's code (its chat and project), on the relay's core,
    and returns the last JSON line it prints: how bench.send and bench.reply weigh one checkout."""
    argv = [*wrapper, "taskset", "-c", SERVER_CORE, sys.executable, str(script), *args]
    full_env = {**os.environ, **env, "PYTHONPATH": str(app_dir)}
    out = subprocess.run(argv, cwd=app_dir, env=full_env, check=True, capture_output=True, text=True)
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def alternated(checkouts: list[Path], rounds: int) -> Iterator[Path]:
    """Every checkout once a round, in reverse order every other round, so the machine's drift hits all alike."""
    for number in range(rounds):
        yield from (checkouts if number % 2 == 0 else reversed(checkouts))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (every process, ours and others')."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Threads:"):
                return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


class Process:
    """A child process pinned to one core, logging to a file, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self, *, name: str, argv: list[str], env: dict[str, str], log: Path, core: str, cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("wb")
        self.popen = subprocess.Popen(
            ["taskset", "-c", core, *argv], cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.popen.pid  # taskset execs the command, so this is the server's own pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, port: int, *, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start listening within {timeout:g} s")


def start_simulator(
    *, tokens: int, interval: float, ttft: float, log: Path, content: str = "plain", record_sends: bool = False
) -> tuple[Process, str]:
    """The simulator on the load core; content "plain" streams "tok0 tok1 ...", the others a markdown reply."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.fake_upstream", "--port", str(port), "--tokens", str(tokens)]
    argv += ["--interval", str(interval), "--ttft", str(ttft)]
    if content != "plain":
        argv += ["--content", content]
    if record_sends:
        argv.append("--record-sends")
    proc = Process(name="simulator", argv=argv, env=dict(os.environ), log=log, core=LOAD_CORE)
    proc.wait_listening(port)
    return proc, f"http://127.0.0.1:{port}"


SERVER_COMMANDS = {
    # As in the Procfile.
    "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "project.asgi:application"],
    # Django has no lifespan handler. Both keep their default access log, as a Procfile line would.
    "uvicorn": [
        "-m",
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--lifespan",
        "off",
        "project.asgi:application",
    ],
    # The reference: a bare Django relay (bench/bare.py), served as the app is.
    "bare": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "bench.bare:application"],
}


def start_server(*, server: str, env: dict[str, str], log: Path, app_dir: Path = ROOT) -> tuple[Process, str]:
    """The app from app_dir (another checkout of it, for before/after comparisons) on the relay's core."""
    port = free_port()
    argv = [sys.executable] + [part.replace("{port}", str(port)) for part in SERVER_COMMANDS[server]]
    cwd = ROOT if server == "bare" else app_dir  # the reference is this checkout's, whichever app is measured
    proc = Process(name=server, argv=argv, env=env, log=log, core=SERVER_CORE, cwd=cwd)
    proc.wait_listening(port)
    return proc, f"http://127.0.0.1:{port}"


def server_log_errors(text: str) -> int:
    return sum(1 for line in text.splitlines() if "Traceback" in line or " ERROR " in line)


def start_profiler(*, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy, stacks of the thread holding the GIL (where CPU goes); non-blocking: pausing 100s of threads distorts."""
    py_spy = Path(sys.executable).with_name("py-spy")
    argv = [str(py_spy), "record", "--nonblocking", "--gil", "--rate", "200", "--format", "raw"]
    argv += ["--pid", str(pid), "--duration", str(max(1, round(seconds))), "--output", str(out)]
    return subprocess.Popen(["taskset", "-c", LOAD_CORE, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def machine() -> dict[str, str]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {"cores": str(os.cpu_count()), "memory": f"{mem_kib / 1024 / 1024:.1f} GiB", "cpu": model}


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
