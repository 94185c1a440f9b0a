"""The embeddings server under schema fuzzing, load, overload and shutdown (issue 14, part 4).

Starts live ``unime serve`` processes on 127.0.0.1 (a tiny random Qwen2-VL built with the project's
``make_tiny`` unless ``--model`` names one) and runs four checks against them:

1. **schema fuzzing**: schemathesis (``st run``, all phases, positive and negative data, every
   check except ``positive_data_acceptance``: a schema cannot say "valid PNG", so schema-valid
   random image strings are rightly refused) against the server's own ``/openapi.json``. The
   requests are counted from the server's access log, so the figure is what reached the server.
   No 5xx may appear (503 is only documented for overload, and there is none here).
2. **load**: 64 concurrent clients for 60 s (10 s with ``--short``) mixing texts, base64 PNG images,
   text+image+instruction items and invalid requests. Each client's inputs are its own (its id is
   in every text, its seed in every image) and every answer is compared with a reference encode
   of those inputs computed in this process beforehand with the same model (``np.allclose``,
   ``rtol=0``, ``atol=ATOL``), so an embedding crossed between clients or requests fails. The
   server's RSS is sampled with psutil; peak RSS, p50/p99 latency, throughput and the status
   counts are reported.
3. **overload**: a second server with a small ``--max-queued-items`` is flooded; the refusals
   must be 503 with ``Retry-After``, everything else 200 with the right embeddings.
4. **drain**: requests sent just before SIGTERM must all complete with 200 (and the right
   embeddings) and the server must exit 0.

    python benchmarks/reliability/server.py --short --output-dir runs/reliability
    python benchmarks/reliability/server.py --full --output-dir runs/reliability

Writes ``server.json`` in the output folder and prints a table; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

API_KEY = "reliability-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL_NAME = "tiny"
ATOL = 1e-5  # |server - reference| per component; float32 batches of different composition
# Limits of the fuzzed server: the coverage phase sends every boundary value, and a 32768-character
# text in each of 256 items would make every boundary case a long forward pass on two cores.
FUZZ_LIMITS = ["--max-items", "16", "--max-text-chars", "2048", "--max-body-bytes", str(1 << 20)]
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
_WORDS = "red green small large cat dog house river photo of a the on near with under blue old".split()


@dataclass(frozen=True)
class Mode:
    """How much of each check to run (``--short`` for CI, ``--full`` for the published figures)."""

    name: str
    fuzz_examples: int  # schemathesis --max-examples (per operation and phase)
    min_fuzz_requests: int
    load_clients: int
    load_seconds: float
    requests_per_client: int  # distinct valid requests each client cycles through
    flood_requests: int
    drain_requests: int
    rss_growth_bound_mib: float  # peak RSS under load may exceed the idle RSS by at most this


SHORT = Mode("short", 60, 200, 64, 10.0, 2, 48, 12, 512.0)
FULL = Mode("full", 900, 1000, 64, 60.0, 4, 96, 24, 512.0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A ``unime serve`` child process on 127.0.0.1, its log captured to ``log_path``."""

    def __init__(self, model: str, log_path: Path, extra: Sequence[str] = ()) -> None:
        self.model = model
        self.log_path = log_path
        self.extra = list(extra)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> LiveServer:
        """Launch the process (returns at once; :meth:`wait_ready` waits for /health)."""
        self.port = free_port()
        env = {**os.environ, "UNIME_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        src = str(Path(__file__).resolve().parents[2] / "src")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "unime", "serve", "--model", self.model, "--host", "127.0.0.1",
                   "--port", str(self.port), "--served-model-name", MODEL_NAME,
                   # float32 as the reference encoder (unime.load's default): --dtype auto would serve
                   # bf16 on a CPU with native bf16 kernels, and every answer would differ by ~2e-3.
                   "--dtype", "float32", *self.extra]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 600.0) -> LiveServer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"unime serve exited before it was ready:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"unime serve was not ready after {timeout_s:g} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def access_counts(self) -> Counter[tuple[str, str, int]]:
        """(method, path, status) of every request in the access log so far."""
        text = self.log_path.read_text(errors="replace")
        return Counter((m["method"], m["path"], int(m["status"])) for m in _ACCESS.finditer(text))

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL after ``timeout_s``: a hang is a failure)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate(30)
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> LiveServer:
        return self.start().wait_ready()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RSSSampler:
    """Samples a process's resident memory every ``interval_s`` in a daemon thread."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        return self.process.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.current())
                self.samples += 1
            except Exception:  # the process ended
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --- 1. schema fuzzing ------------------------------------------------------------------------------


def fuzz(server: LiveServer, examples: int, seed: int, out_dir: Path, min_requests: int) -> dict[str, Any]:
    """Run schemathesis against the live server's published schema; count what reached it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / "schemathesis.toml"
    # Schema-violating data must be refused with a 4xx the server documents (413: a length limit).
    config.write_text('[checks.negative_data_rejection]\nexpected-statuses = ["400", "401", "404", "413"]\n')
    report = out_dir / "schemathesis-report.json"
    before = server.access_counts()
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
        server.url + "/openapi.json", "--header", f"Authorization: Bearer {API_KEY}",
        "--mode", "all", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(examples), "--seed", str(seed), "--workers", "2",
        "--request-timeout", "60", "--generation-database", "none",
        "--report", "json", "--report-json-path", str(report),
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    (out_dir / "schemathesis-output.txt").write_text(done.stdout + done.stderr)
    time.sleep(0.5)  # the last access-log lines
    sent = server.access_counts() - before
    statuses = Counter()
    for (_, _, status), n in sent.items():
        statuses[status] += n
    summary = json.loads(report.read_text()) if report.exists() else {}
    failures = [f"{f['code']} {f['title']} x{f['count']} on {', '.join(f['operations'])}"
                for f in summary.get("failures", [])]
    failures += [f"schemathesis error: {e}" for e in summary.get("errors", [])]
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    problems = list(failures)
    if done.returncode != 0 and not failures:
        problems.append(f"st run exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
    if server_errors:
        problems.append(f"{server_errors} responses with 5xx")
    requests = sum(statuses.values())
    if requests < min_requests:
        problems.append(f"only {requests} requests reached the server (at least {min_requests} asked)")
    return {
        "tool": f"schemathesis {summary.get('schemathesis_version', '?')}",
        "max_examples": examples,
        "seed": seed,
        "seconds": round(seconds, 1),
        "test_cases_generated": summary.get("test_cases", {}).get("generated"),
        "requests": requests,
        "requests_by_operation": _by_operation(sent),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": server_errors,
        "schemathesis_exit_code": done.returncode,
        "problems": problems,
    }


def hostile_bodies() -> dict[str, bytes]:
    """Request bodies a schema-driven generator does not produce: parser limits, odd encodings,
    lone surrogates. Each must get a 2xx or a 4xx with an OpenAI error body, never a 5xx."""
    return {
        "5000-digit integer": b'{"input": "x", "dimensions": ' + b"9" * 5000 + b"}",
        "5000-digit integer item": b'{"input": [' + b"7" * 5000 + b"]}",
        "nesting 100000 deep": b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "nesting 100000 deep objects": b'{"input": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        "lone surrogate text": b'{"input": "\\ud800"}',
        "lone surrogate in a list": b'{"input": ["ok", "x \\udfff"]}',
        "lone surrogate instruction": b'{"input": [{"text": "ok", "instruction": "\\udbff"}]}',
        "lone surrogate image": b'{"input": [{"image": "\\ud800"}]}',
        "lone surrogate data URL type": b'{"input": [{"image": "data:\\ud800;base64,aGk="}]}',
        "lone surrogate model": b'{"input": "x", "model": "\\ud800"}',
        "lone surrogate key": b'{"input": [{"text": "x", "\\ud800": 1}]}',
        "lone surrogate format": b'{"input": "x", "encoding_format": "\\ud800"}',
        "NaN dimensions": b'{"input": "x", "dimensions": NaN}',
        "1e999 dimensions": b'{"input": "x", "dimensions": 1e999}',
        "NaN item": b'{"input": [NaN]}',
        "NUL in text": b'{"input": "a\\u0000b"}',
        "UTF-8 BOM": b'\xef\xbb\xbf{"input": "x"}',
        "UTF-16 body": '{"input": "x"}'.encode("utf-16"),
        "Latin-1 body": '{"input": "caf\xe9"}'.encode("latin-1"),
        "invalid UTF-8": b'{"input": "\xff\xfe"}',
        "duplicate keys": b'{"input": "x", "input": 5}',
        "empty body": b"",
        "whitespace body": b" \n\t ",
        "JSON null": b"null",
        "JSON string": b'"input"',
        "non-ASCII base64": '{"input": [{"image": "data:image/png;base64,ää=="}]}'.encode(),
        "base64 padding only": b'{"input": [{"image": "===="}]}',
        "data URL without comma": b'{"input": [{"image": "data:image/png;base64"}]}',
        "a million-item list": b'{"input": [' + b'"a",' * 999_999 + b'"a"]}',
    }


def hostile_raw_requests(body: bytes = b'{"input": "x"}') -> dict[str, bytes]:
    """Whole HTTP requests with odd framing, sent on a raw socket."""
    head = f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
    head += "Content-Type: application/json\r\n"
    return {
        # The client sends part of the declared body and hangs up (no answer is read).
        "a body cut short, then a hang-up": (head + f"Content-Length: {len(body) + 100}\r\n\r\n").encode() + body,
        "Content-Length with leading zeros": (head + f"Content-Length: 000{len(body)}\r\n\r\n").encode() + body,
        "Content-Length superscript digit": head.encode() + "Content-Length: ²\r\n\r\n".encode() + body,
        "Content-Length negative": (head + "Content-Length: -1\r\n\r\n").encode() + body,
        "Content-Length huge": (head + "Content-Length: 99999999999999999999999\r\n\r\n").encode() + body,
        "chunked": (head + "Transfer-Encoding: chunked\r\n\r\n").encode()
        + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n",
        "chunked with a bad size": (head + "Transfer-Encoding: chunked\r\n\r\nzz\r\n").encode() + body,
        "both framings": (head + f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n",
    }


def raw_status(url: str, request: bytes, *, read: bool = True, timeout_s: float = 30.0) -> int:
    """The status of a raw HTTP request (0 when the server closed the connection without one,
    -1 when ``read`` is false: the client hangs up at once). The socket is not half-closed while
    waiting, so the server does not take the request for a disconnect."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(request)
        if not read:
            return -1
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3})", received)
    return int(match.group(1)) if match else 0


def hostile(server: LiveServer) -> dict[str, Any]:
    """Send the hostile bodies and raw requests; every answer must be below 500."""
    results: dict[str, int] = {}
    problems = []
    with httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as session:
        for name, body in hostile_bodies().items():
            response = session.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
            results[name] = response.status_code
            if response.status_code >= 500:
                problems.append(f"{name}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400 and not isinstance(response.json().get("error"), dict):
                problems.append(f"{name}: {response.status_code} without an OpenAI error body")
    tracebacks = server.log_tail(10**9).count("Exception in ASGI application")
    for name, request in hostile_raw_requests().items():
        status = raw_status(server.url, request, read="hang-up" not in name)
        results[f"raw: {name}"] = status
        if status >= 500:
            problems.append(f"raw: {name}: {status}")
    health = httpx.get(server.url + "/health", timeout=10).status_code
    if health != 200:
        problems.append(f"/health answered {health} afterwards")
    time.sleep(0.5)
    tracebacks = server.log_tail(10**9).count("Exception in ASGI application") - tracebacks
    if tracebacks:
        problems.append(f"{tracebacks} tracebacks in the server log from the raw requests")
    return {"requests": len(results), "statuses": results, "problems": problems}


def _by_operation(counts: Counter[tuple[str, str, int]]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for (method, path, _), n in counts.items():
        totals[f"{method} {path.split('?')[0]}"] += n
    return dict(totals.most_common())


# --- 2. load ----------------------------------------------------------------------------------------


def png_data_url(seed: Sequence[int], size: tuple[int, int] = (32, 24)) -> tuple[str, Image.Image]:
    pixels = np.random.default_rng(list(seed)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), image


@dataclass
class Request:
    """A request body and what the server must answer: rows equal to ``reference`` (valid), or
    ``status`` with an OpenAI error body (invalid)."""

    body: bytes
    items: list[Any] = field(default_factory=list)  # model.encode inputs, for the reference
    reference: np.ndarray | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))

    @property
    def valid(self) -> bool:
        return self.status == 200


def valid_request(client: int, index: int) -> Request:
    """Client ``client``'s request ``index``: texts, images or both, none shared with anyone."""
    rng = np.random.default_rng([client, index])

    def text() -> str:
        return f"client {client} request {index}: " + " ".join(rng.choice(_WORDS, size=int(rng.integers(3, 12))))

    kind = (client + index) % 4
    wire: list[Any] = []
    items: list[Any] = []
    if kind == 0:  # texts
        for _ in range(int(rng.integers(1, 4))):
            wire.append(text())
            items.append(wire[-1])
    elif kind == 1:  # one image
        url, image = png_data_url([client, index, 0])
        wire.append({"image": url})
        items.append(image)
    elif kind == 2:  # a text, an image and a text+image+instruction item
        url, image = png_data_url([client, index, 1], size=(24, 32))
        caption = text()
        wire += [caption, {"image": url}, {"text": caption, "image": url, "instruction": "Find the picture"}]
        items += [caption, image, {"text": caption, "image": image, "instruction": "Find the picture"}]
    else:  # a text with an instruction
        t = text()
        wire.append({"text": t, "instruction": "Represent the sentence"})
        items.append({"text": t, "instruction": "Represent the sentence"})
    body = {"model": MODEL_NAME, "input": wire}
    if index % 3 == 2:
        body["encoding_format"] = "base64"
    return Request(json.dumps(body).encode(), items=items)


def invalid_requests(client: int) -> list[Request]:
    """Requests the server must refuse with exactly this status (and an OpenAI error body)."""
    good = f"client {client} refused"
    return [
        Request(b'{"input": ["' + good.encode() + b'",', status=400),
        Request(json.dumps({"input": [good, "   "]}).encode(), status=400),
        Request(json.dumps({"input": [{"text": good, "picture": "x"}]}).encode(), status=400),
        Request(json.dumps({"input": [{"image": "not base64!"}]}).encode(), status=400),
        Request(json.dumps({"input": [1, 2, 3]}).encode(), status=400),
        Request(json.dumps({"input": good, "model": "other-model"}).encode(), status=404),
        Request(json.dumps({"input": [good] * 300}).encode(), status=413),
        Request(json.dumps({"input": good}).encode(), status=401, headers={}),
    ]


def compute_references(model: Any, requests: list[Request]) -> None:
    """Each valid request's reference rows: ``model.encode`` of its own inputs, alone."""
    for request in requests:
        if request.valid:
            request.reference = np.asarray(
                model.encode(request.items, batch_size=32, show_progress_bar=False), dtype=np.float32
            )


def separation(requests: list[Request]) -> float:
    """The smallest max-abs difference between the references of two different inputs: the
    crossing check can only tell rows apart that differ by more than ATOL."""
    rows = np.concatenate([r.reference for r in requests if r.reference is not None])
    rows = np.unique(rows, axis=0)
    smallest = np.inf
    for i in range(len(rows) - 1):
        smallest = min(smallest, float(np.abs(rows[i + 1 :] - rows[i]).max(axis=1).min()))
    return smallest


def rows_of(body: dict[str, Any]) -> np.ndarray:
    data = sorted(body["data"], key=lambda row: row["index"])
    rows = [
        np.frombuffer(base64.b64decode(row["embedding"]), dtype="<f4")
        if isinstance(row["embedding"], str)
        else np.asarray(row["embedding"], dtype=np.float32)
        for row in data
    ]
    return np.stack(rows)


@dataclass
class Outcome:
    """What one client saw."""

    latencies_ms: list[float] = field(default_factory=list)
    items: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    crossed: list[str] = field(default_factory=list)  # a 200 whose rows differ from the reference
    unexpected: list[str] = field(default_factory=list)  # a status other than the one expected
    retry_after: Counter[str] = field(default_factory=Counter)  # Retry-After of each 503
    max_deviation: float = 0.0
    deferred: list[tuple[Request, np.ndarray, str]] = field(default_factory=list)

    def merge(self, other: Outcome) -> None:
        self.deferred += other.deferred
        self.latencies_ms += other.latencies_ms
        self.items += other.items
        self.statuses.update(other.statuses)
        self.crossed += other.crossed
        self.unexpected += other.unexpected
        self.retry_after.update(other.retry_after)
        self.max_deviation = max(self.max_deviation, other.max_deviation)


def send(session: httpx.Client, request: Request, outcome: Outcome, label: str) -> int:
    """Post one request and check its answer against what it must be; returns the status."""
    headers = {"Content-Type": "application/json", **request.headers}
    started = time.perf_counter()
    try:
        response = session.post("/v1/embeddings", content=request.body, headers=headers)
    except httpx.HTTPError as error:
        outcome.statuses[0] += 1
        outcome.unexpected.append(f"{label}: {type(error).__name__}: {error}")
        return 0
    elapsed = (time.perf_counter() - started) * 1000
    status = response.status_code
    outcome.statuses[status] += 1
    if status == 503:
        outcome.retry_after[response.headers.get("retry-after", "<missing>")] += 1
        return status
    if status != request.status:
        outcome.unexpected.append(f"{label}: expected {request.status}, got {status}: {response.text[:300]}")
        return status
    body = response.json()
    if not request.valid:
        if not isinstance(body.get("error", {}).get("message"), str):
            outcome.unexpected.append(f"{label}: {status} without an OpenAI error body: {response.text[:300]}")
        return status
    rows = rows_of(body)
    if request.reference is None:  # checked afterwards (check_deferred): only answered ones cost a reference
        outcome.deferred.append((request, rows, label))
        outcome.latencies_ms.append(elapsed)
        outcome.items += len(request.items)
        return status
    if rows.shape != request.reference.shape or not np.allclose(rows, request.reference, rtol=0, atol=ATOL):
        deviation = float(np.abs(rows - request.reference).max()) if rows.shape == request.reference.shape else -1
        outcome.crossed.append(f"{label}: rows differ from the reference (max |diff| {deviation:.3g})")
    else:
        outcome.max_deviation = max(outcome.max_deviation, float(np.abs(rows - request.reference).max()))
    outcome.latencies_ms.append(elapsed)
    outcome.items += len(request.items)
    return status


def load(server: LiveServer, pools: list[list[Request]], seconds: float) -> tuple[Outcome, float]:
    """Each client cycles through its own pool until the time is up; returns the merged outcome
    and the wall time (requests in flight at the deadline finish and count)."""
    stop_at = time.monotonic() + seconds

    def client(index: int) -> Outcome:
        outcome = Outcome()
        pool = pools[index]
        with httpx.Client(base_url=server.url, timeout=120) as session:
            turn = 0
            while time.monotonic() < stop_at:
                send(session, pool[turn % len(pool)], outcome, f"client {index} turn {turn}")
                turn += 1
        return outcome

    started = time.monotonic()
    total = Outcome()
    with ThreadPoolExecutor(len(pools)) as executor:
        for outcome in executor.map(client, range(len(pools))):
            total.merge(outcome)
    return total, time.monotonic() - started


def client_pools(clients: int, per_client: int) -> list[list[Request]]:
    """Each client's requests: ``per_client`` valid ones, then one invalid one, interleaved."""
    pools = []
    for c in range(clients):
        valid = [valid_request(c, i) for i in range(per_client)]
        invalid = invalid_requests(c)
        bad = invalid[c % len(invalid)], invalid[(c + 3) % len(invalid)]
        pools.append([valid[0], bad[0], *valid[1:], bad[1]])
    return pools


def status_summary(statuses: Counter[int]) -> dict[str, int]:
    return {
        "2xx": sum(n for s, n in statuses.items() if 200 <= s < 300),
        "4xx": sum(n for s, n in statuses.items() if 400 <= s < 500),
        "503": statuses.get(503, 0),
        "5xx_other": sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        "transport_errors": statuses.get(0, 0),
    }


def run_load(server: LiveServer, model: Any, mode: Mode) -> dict[str, Any]:
    pools = client_pools(mode.load_clients, mode.requests_per_client)
    started = time.monotonic()
    compute_references(model, [r for pool in pools for r in pool])
    reference_s = time.monotonic() - started
    smallest = separation([r for pool in pools for r in pool])
    with RSSSampler(server.pid) as rss:
        idle = rss.current()
        outcome, seconds = load(server, pools, mode.load_seconds)
    valid = len(outcome.latencies_ms)
    p50, p99 = np.percentile(outcome.latencies_ms, [50, 99]) if valid else (float("nan"), float("nan"))
    counts = status_summary(outcome.statuses)
    problems = []
    if outcome.crossed:
        problems.append(f"{len(outcome.crossed)} answers differ from their reference: {outcome.crossed[:3]}")
    if outcome.unexpected:
        problems.append(f"{len(outcome.unexpected)} unexpected answers: {outcome.unexpected[:3]}")
    if counts["5xx_other"]:
        problems.append(f"{counts['5xx_other']} 5xx other than 503")
    if smallest <= 10 * ATOL:
        problems.append(f"two different inputs embed within {smallest:.3g}: the crossing check is blind")
    peak_mib, idle_mib = rss.peak / 2**20, idle / 2**20
    if peak_mib - idle_mib > mode.rss_growth_bound_mib:
        problems.append(
            f"peak RSS {peak_mib:.0f} MiB is more than {mode.rss_growth_bound_mib:.0f} MiB above idle {idle_mib:.0f}"
        )
    if not valid:
        problems.append("no valid request was answered")
    return {
        "clients": mode.load_clients,
        "seconds": round(seconds, 1),
        "distinct_requests": sum(len(pool) for pool in pools),
        "reference_encode_s": round(reference_s, 1),
        "requests": sum(outcome.statuses.values()),
        "statuses": counts,
        "valid_answered": valid,
        "items_embedded": outcome.items,
        "requests_per_s": round(valid / seconds, 2),
        "items_per_s": round(outcome.items / seconds, 2),
        "p50_ms": round(float(p50), 1),
        "p99_ms": round(float(p99), 1),
        "atol": ATOL,
        "max_deviation": outcome.max_deviation,
        "smallest_separation": smallest,
        "crossed": len(outcome.crossed),
        "unexpected": len(outcome.unexpected),
        "rss_idle_mib": round(idle_mib, 1),
        "rss_peak_mib": round(peak_mib, 1),
        "rss_growth_bound_mib": mode.rss_growth_bound_mib,
        "rss_samples": rss.samples,
        "problems": problems,
    }


# --- 3. overload and 4. drain -----------------------------------------------------------------------


def flood_requests(count: int, items: int, prefix: str) -> list[Request]:
    requests = []
    for i in range(count):
        texts = [f"{prefix} {i}.{j} " + " ".join(_WORDS[(i + j) % len(_WORDS) :] * 3) for j in range(items)]
        requests.append(Request(json.dumps({"input": texts}).encode(), items=texts))
    return requests


def concurrently(server: LiveServer, requests: list[Request], label: str) -> Outcome:
    def one(index: int) -> Outcome:
        outcome = Outcome()
        with httpx.Client(base_url=server.url, timeout=120) as session:
            send(session, requests[index], outcome, f"{label} {index}")
        return outcome

    total = Outcome()
    with ThreadPoolExecutor(len(requests)) as executor:
        for outcome in executor.map(one, range(len(requests))):
            total.merge(outcome)
    return total


def check_deferred(model: Any, outcome: Outcome) -> None:
    """Compare the answers received without a reference with one computed now."""
    compute_references(model, [request for request, _, _ in outcome.deferred])
    for request, rows, label in outcome.deferred:
        assert request.reference is not None
        if rows.shape != request.reference.shape or not np.allclose(rows, request.reference, rtol=0, atol=ATOL):
            outcome.crossed.append(f"{label}: rows differ from the reference")
    outcome.deferred.clear()


def run_overload(server: LiveServer, model: Any, mode: Mode, queue: int) -> dict[str, Any]:
    """Flood a server whose queue holds ``queue`` items with requests of ``queue`` items each
    (the references of the few answered are computed afterwards)."""
    requests = flood_requests(mode.flood_requests, queue, "flood")
    outcome = concurrently(server, requests, "flood")
    check_deferred(model, outcome)
    after = httpx.get(server.url + "/health", timeout=10).status_code
    counts = status_summary(outcome.statuses)
    problems = []
    if counts["503"] == 0:
        problems.append("the flood was never refused with 503: the queue limit was not reached")
    if set(outcome.retry_after) - {"1"}:
        problems.append(f"503 without Retry-After: 1: {dict(outcome.retry_after)}")
    if outcome.crossed or outcome.unexpected or counts["5xx_other"]:
        problems.append(f"wrong answers under overload: {(outcome.crossed + outcome.unexpected)[:3]}")
    if after != 200:
        problems.append(f"/health answered {after} after the flood")
    return {
        "max_queued_items": queue,
        "requests": len(requests),
        "items_per_request": queue,
        "statuses": counts,
        "answered_200_checked": counts["2xx"],
        "retry_after": dict(outcome.retry_after),
        "health_after": after,
        "problems": problems,
    }


def post_raw(url: str, request: Request, sent: threading.Semaphore, outcome: Outcome, label: str) -> None:
    """POST over a plain socket, releasing ``sent`` once every byte is written (so the caller knows
    the request left the client before it signals the server), then read and check the answer."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(request.body)}\r\nConnection: close\r\n\r\n")
    try:
        with socket.create_connection((host, int(port)), timeout=120) as sock:
            sock.sendall(head.encode() + request.body)
            sent.release()
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
    except OSError as error:
        sent.release()
        outcome.statuses[0] += 1
        outcome.unexpected.append(f"{label}: {type(error).__name__}: {error}")
        return
    header, _, body = received.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", header)
    if match is None:
        outcome.statuses[0] += 1
        outcome.unexpected.append(f"{label}: the connection closed without an answer ({received[:100]!r})")
        return
    status = int(match.group(1))
    outcome.statuses[status] += 1
    if status != 200:
        outcome.unexpected.append(f"{label}: {status} {body[:200]!r}")
        return
    assert request.reference is not None
    rows = rows_of(json.loads(body))
    if rows.shape != request.reference.shape or not np.allclose(rows, request.reference, rtol=0, atol=ATOL):
        outcome.crossed.append(f"{label}: rows differ from the reference")


def run_drain(server: LiveServer, model: Any, mode: Mode) -> dict[str, Any]:
    """Send requests, SIGTERM the server while they are in flight, and check each completes.

    "Sent just before SIGTERM": every byte of every request has been written to its socket (raw
    sockets, so the client knows) and the server has started queueing them."""
    requests = flood_requests(mode.drain_requests, 8, "drain")
    compute_references(model, requests)
    sent = threading.Semaphore(0)
    outcomes = [Outcome() for _ in requests]
    threads = [threading.Thread(target=post_raw, args=(server.url, r, sent, o, f"drain {i}"))
               for i, (r, o) in enumerate(zip(requests, outcomes, strict=True))]
    for thread in threads:
        thread.start()
    for _ in requests:
        sent.acquire(timeout=60)
    deadline = time.monotonic() + 30
    queued = 0
    while time.monotonic() < deadline and queued == 0 and any(t.is_alive() for t in threads):
        queued = httpx.get(server.url + "/health", timeout=10).json()["queued_items"]
    signalled = time.monotonic()
    exit_code = server.terminate(timeout_s=120)
    exit_s = time.monotonic() - signalled
    for thread in threads:
        thread.join(120)
    outcome = Outcome()
    for one in outcomes:
        outcome.merge(one)
    counts = status_summary(outcome.statuses)
    problems = []
    if queued == 0:
        problems.append("no request was seen in flight before SIGTERM")
    if counts["2xx"] != len(requests) or outcome.crossed or outcome.unexpected:
        problems.append(
            f"{counts['2xx']} of {len(requests)} in-flight requests completed with 200: "
            f"{(outcome.crossed + outcome.unexpected)[:3]}"
        )
    # uvicorn re-raises the SIGTERM it handled once it has shut down, so -15 is a clean exit too;
    # what shows the shutdown was graceful is the lifespan's end in the log.
    graceful = "Application shutdown complete" in server.log_tail(2000)
    if exit_code not in (0, -signal.SIGTERM) or not graceful:
        problems.append(f"the server exited {exit_code} after SIGTERM (graceful shutdown logged: {graceful})")
    return {
        "requests": len(requests),
        "queued_at_sigterm": queued,
        "completed_200": counts["2xx"],
        "statuses": counts,
        "exit_code": exit_code,
        "graceful_shutdown_logged": graceful,
        "exit_after_sigterm_s": round(exit_s, 1),
        "problems": problems,
    }


# --- the script ---------------------------------------------------------------------------------


PARTS = ("fuzz", "hostile", "load", "overload", "drain")


def table(results: dict[str, Any]) -> str:
    f, ho, lo, ov, dr = (results.get(k, {}) for k in PARTS)
    rows = [("check", "figure", "result")]
    if f:
        rows.append(("schema fuzzing", f"{f['requests']} requests ({f['test_cases_generated']} cases), "
                     f"statuses {f['statuses']}, {f['server_errors']} 5xx", _verdict(f)))
    if ho:
        counts = Counter(ho["statuses"].values())
        rows.append(("hostile bodies", f"{ho['requests']} hand-made requests, statuses {dict(sorted(counts.items()))}",
                     _verdict(ho)))
    if lo:
        s = lo["statuses"]
        rows.append(("load", f"{lo['clients']} clients x {lo['seconds']} s: {lo['requests']} requests "
                     f"(2xx {s['2xx']}, 4xx {s['4xx']}, 503 {s['503']}, other 5xx {s['5xx_other']}); "
                     f"{lo['requests_per_s']} valid req/s, {lo['items_per_s']} items/s; p50 {lo['p50_ms']} ms, "
                     f"p99 {lo['p99_ms']} ms; {lo['crossed']} crossed (atol {lo['atol']:g}, max dev "
                     f"{lo['max_deviation']:.2g}, separation {lo['smallest_separation']:.2g}); RSS idle "
                     f"{lo['rss_idle_mib']} MiB, peak {lo['rss_peak_mib']} MiB (bound idle + {lo['rss_growth_bound_mib']:g})",
                     _verdict(lo)))
    if ov:
        rows.append(("overload", f"{ov['requests']} x {ov['items_per_request']} items, queue "
                     f"{ov['max_queued_items']}: statuses {ov['statuses']}, Retry-After {ov['retry_after']}",
                     _verdict(ov)))
    if dr:
        rows.append(("drain on SIGTERM", f"{dr['completed_200']}/{dr['requests']} in flight completed 200 "
                     f"({dr['queued_at_sigterm']} items queued at SIGTERM); exit {dr['exit_code']} after "
                     f"{dr['exit_after_sigterm_s']} s", _verdict(dr)))
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|---|---|---|")
    return "\n".join(lines)


def _verdict(part: dict[str, Any]) -> str:
    return "ok" if not part.get("problems") else "FAILED: " + "; ".join(part["problems"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--short", action="store_true", help="the CI size (default)")
    size.add_argument("--full", action="store_true", help="the published size")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/reliability"))
    parser.add_argument("--model", help="unime model to serve (default: a tiny random Qwen2-VL)")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    mode = FULL if args.full else SHORT
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    import unime

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model
        if model_path is None:
            from unime.models.tiny import make_tiny

            model_path = str(make_tiny("qwen2_vl", Path(tmp) / "tiny-qwen2-vl"))
        queue = 8
        main_server = LiveServer(model_path, out / "server-main.log", FUZZ_LIMITS).start()
        small = LiveServer(model_path, out / "server-overload.log",
                           ["--max-queued-items", str(queue), "--max-items", str(queue),
                            "--max-batch-size", str(queue)]).start()
        results: dict[str, Any] = {"mode": mode.name, "model": args.model or "tiny random qwen2_vl (make_tiny)",
                                   "cpus": os.cpu_count(), "load_average": os.getloadavg()}
        try:
            model = unime.load(model_path)  # the reference encoder, while the servers start
            main_server.wait_ready()
            results["fuzz"] = fuzz(main_server, mode.fuzz_examples, args.seed, out / "schemathesis",
                                   mode.min_fuzz_requests)
            results["hostile"] = hostile(main_server)
            results["load"] = run_load(main_server, model, mode)
            small.wait_ready()
            results["overload"] = run_overload(small, model, mode, queue)
            small.stop()
            results["drain"] = run_drain(main_server, model, mode)
        finally:
            main_server.stop()
            small.stop()
    results["wall_s"] = round(time.monotonic() - started, 1)
    problems = [p for k in PARTS for p in results.get(k, {}).get("problems", [])]
    results["ok"] = not problems
    (out / "server.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(table(results))
    print(f"\n{mode.name} run, {results['wall_s']} s; wrote {out / 'server.json'}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
