"""Security properties as tests (issue 14, part 6).

1. No unsafe deserialisation in the package (an AST scan of ``src/unime``, ``benchmarks`` and
   ``scripts``): no pickle / cPickle / dill / joblib / shelve / marshal, no ``torch.load`` without
   ``weights_only=True``, no ``eval`` / ``exec``, no ``yaml.load`` without a safe loader, no
   ``np.load(allow_pickle=True)``, no ``pandas.read_pickle``, no ``shell=True``.

   Hugging Face Trainer checkpoints hold pickled files that transformers itself loads on resume
   (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``scaler.pt``). Finding for the installed
   transformers (5.23): every ``torch.load`` in ``transformers/trainer.py`` passes
   ``weights_only=True`` (after ``check_torch_load_is_safe()``, which requires torch >= 2.6, the
   fix of CVE-2025-32434), and ``rng_state.pth`` is read inside ``safe_globals()``, which allows
   only the numpy types an RNG state holds. A tampered checkpoint therefore cannot run code on
   resume. ``test_transformers_trainer_loads_checkpoints_with_weights_only`` pins that, so an
   upgrade that drops it turns this red. ``training_args.bin`` (a pickled TrainingArguments that
   transformers writes but never reads back) is deleted by unime's trainer, which saves the
   arguments as JSON instead.
2. ``trust_remote_code`` reaches transformers only when the user set it: every ``from_pretrained``
   of the auto classes is recorded across ``unime.load`` and each command's loading path.
3. Remote image URLs: off by default; when on, private, loopback and link-local targets are refused,
   in every spelling, after redirects, and when the DNS answer changes between check and connect.
4. The API key is compared in constant time and never appears in logs or responses.
"""

from __future__ import annotations

import ast
import contextlib
import http.server
import io
import ipaddress
import json
import logging
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpcore
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCANNED = [ROOT / "src" / "unime", ROOT / "benchmarks", ROOT / "scripts"]

# --- 1. unsafe deserialisation (AST) -----------------------------------------------------------------

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` of a Name / Attribute chain ('' for anything else)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe deserialisation or code execution in ``source``, as 'line: what'."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> module or module.attr it stands for
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                if root in FORBIDDEN_MODULES:
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + (f".{rest}" if rest else "")
        where = f"{node.lineno}: {name}()"
        if full in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append(where)
        elif full in ("torch.load", "torch.serialization.load") and not _is_true(_keyword(node, "weights_only")):
            found.append(f"{where} without weights_only=True")
        elif full in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if _dotted(loader) not in ("yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader", "CSafeLoader"):
                found.append(f"{where} without a SafeLoader (use yaml.safe_load)")
        elif full in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            found.append(where)
        elif full in ("numpy.load", "np.load") and _is_true(_keyword(node, "allow_pickle")):
            found.append(f"{where} with allow_pickle=True")
        elif full in ("pandas.read_pickle", "pd.read_pickle", "joblib.load"):
            found.append(where)
        elif _is_true(_keyword(node, "shell")):
            found.append(f"{where} with shell=True")
    return found


def _python_files() -> list[Path]:
    return sorted(p for folder in SCANNED if folder.is_dir() for p in folder.rglob("*.py"))


def test_the_scan_covers_the_package() -> None:
    files = _python_files()
    assert ROOT / "src" / "unime" / "modeling.py" in files and len(files) > 50


def test_no_module_deserialises_unsafely_or_executes_data() -> None:
    problems = {str(p.relative_to(ROOT)): unsafe_uses(p.read_text(encoding="utf-8"), str(p)) for p in _python_files()}
    assert {k: v for k, v in problems.items() if v} == {}


@pytest.mark.parametrize(
    ("snippet", "caught"),
    [
        ("import pickle", True),
        ("import _pickle as p", True),
        ("from dill import loads", True),
        ("import joblib\njoblib.load('x')", True),
        ("import torch\ntorch.load('x')", True),
        ("import torch\ntorch.load('x', weights_only=False)", True),
        ("from torch import load\nload('x')", True),
        ("import torch as t\nt.load('x')", True),
        ("import torch\ntorch.load('x', map_location='cpu', weights_only=True)", False),
        ("eval('1')", True),
        ("exec(code)", True),
        ("import yaml\nyaml.load(s)", True),
        ("import yaml\nyaml.load(s, Loader=yaml.FullLoader)", True),
        ("import yaml\nyaml.load(s, Loader=yaml.SafeLoader)", False),
        ("import yaml\nyaml.safe_load(s)", False),
        ("import yaml\nyaml.unsafe_load(s)", True),
        ("import numpy as np\nnp.load('x', allow_pickle=True)", True),
        ("import numpy as np\nnp.load('x', mmap_mode='r')", False),
        ("import pandas as pd\npd.read_pickle('x')", True),
        ("import subprocess\nsubprocess.run(cmd, shell=True)", True),
        ("model.eval()", False),
    ],
)
def test_the_scan_catches_what_it_looks_for(snippet: str, caught: bool) -> None:
    assert bool(unsafe_uses(snippet)) is caught


def test_transformers_trainer_loads_checkpoints_with_weights_only() -> None:
    """The pickled files of a Trainer checkpoint (optimizer.pt, scheduler.pt, rng_state.pth,
    scaler.pt) are read by transformers on resume; in the installed version every such read is
    ``torch.load(..., weights_only=True)`` behind ``check_torch_load_is_safe()`` (see the module
    docstring). Also peft's adapter .bin reader defaults to weights_only=True."""
    import inspect

    import peft.utils.save_and_load as peft_io
    import transformers.trainer as trainer

    source = Path(inspect.getsourcefile(trainer)).read_text(encoding="utf-8")
    loads = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and _dotted(n.func) == "torch.load"]
    assert len(loads) >= 5
    assert [n.lineno for n in loads if not _is_true(_keyword(n, "weights_only"))] == []
    assert "check_torch_load_is_safe()" in source
    signature = inspect.signature(peft_io.torch_load)
    assert signature.parameters["weights_only"].default is True


def test_unime_checkpoints_keep_no_pickled_training_arguments() -> None:
    """transformers pickles TrainingArguments into training_args.bin; unime's trainer removes it
    (the arguments are saved as JSON), so a checkpoint folder carries no pickle of our making."""
    source = (ROOT / "src" / "unime" / "training" / "trainer.py").read_text(encoding="utf-8")
    assert "training_args.bin" in source and "os.remove" in source


# --- 2. trust_remote_code reaches transformers only when asked -----------------------------------------


class _Stop(Exception):
    """Raised right after a command has loaded its model, so the test stops there."""


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any]]:
    """Every ``from_pretrained`` of transformers' auto classes: (class, source, trust_remote_code)."""
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    calls: list[tuple[str, str, Any]] = []

    def wrap(owner: type) -> None:
        original = owner.__dict__["from_pretrained"].__func__

        def from_pretrained(cls: type, name: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append((cls.__name__, str(name), kwargs.get("trust_remote_code")))
            return original(cls, name, *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", classmethod(from_pretrained))

    # The auto classes, and PreTrainedModel: sentence-transformers resolves the concrete class
    # (Qwen2VLModel) from the config and calls its from_pretrained directly.
    for owner in (_BaseAutoModelClass, transformers.PreTrainedModel, transformers.AutoConfig,
                  transformers.AutoProcessor, transformers.AutoTokenizer, transformers.AutoImageProcessor):
        wrap(owner)
    return calls


def _kinds(calls: list[tuple[str, str, Any]], source: str) -> dict[str, set[Any]]:
    """trust_remote_code values per kind of loader (config / model / processor) for one source."""
    kinds: dict[str, set[Any]] = {}
    for cls, name, trust in calls:
        if Path(name) != Path(source):
            continue
        kind = "config" if cls == "AutoConfig" else "processor" if cls.endswith(("Processor", "Tokenizer")) else "model"
        kinds.setdefault(kind, set()).add(bool(trust))
    return kinds


def _assert_trust(calls: list[tuple[str, str, Any]], source: Path, trusted: bool, kinds=("config", "model")) -> None:
    """Untrusted: no call at all got trust_remote_code=True. Trusted: each kind of loader got it
    (some internal reads, e.g. a config read only to pick a class, go without it: harmless)."""
    seen = _kinds(calls, str(source))
    assert set(kinds) <= set(seen), calls
    if trusted:
        assert all(True in seen[kind] for kind in kinds), (seen, calls)
    else:
        assert all(not trust for _, _, trust in calls), calls


@pytest.fixture
def tiny(tiny_model_factory: Any) -> Path:
    return tiny_model_factory("qwen2_vl")


@pytest.mark.parametrize("trusted", [False, True])
def test_unime_load_passes_trust_remote_code_only_when_set(recorded: list, tiny: Path, trusted: bool) -> None:
    import unime

    unime.load(str(tiny), **({"trust_remote_code": True} if trusted else {}))
    _assert_trust(recorded, tiny, trusted, ("config", "model", "processor"))


def _png(path: Path) -> Path:
    Image.fromarray(np.full((16, 16, 3), 120, dtype=np.uint8)).save(path)
    return path


def _cli(argv: list[str]) -> int:
    from unime.cli import main

    return main(argv)


def _encode_argv(tiny: Path, tmp: Path) -> list[str]:
    rows = tmp / "rows.jsonl"
    rows.write_text('{"text": "a red square"}\n')
    return ["encode", "--model", str(tiny), "--input", str(rows), "--output", str(tmp / "o.npy"), "--no-progress"]


def _sts_argv(tiny: Path, tmp: Path) -> list[str]:
    data = tmp / "sts.jsonl"
    data.write_text("".join(json.dumps({"sentence1": f"a {c}", "sentence2": f"the {c}", "score": i})
                            + "\n" for i, c in enumerate(["cat", "dog", "car", "tree"])))
    return ["eval", "sts", "--model", str(tiny), "--data", str(data), "--output", str(tmp / "sts.json")]


def _caption_argv(tiny: Path, tmp: Path) -> list[str]:
    return ["caption", str(_png(tmp / "a.png")), "--model", str(tiny), "--max-new-tokens", "2"]


def _plot_argv(tiny: Path, tmp: Path) -> list[str]:
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": _png(tmp / f"{i}.png").name, "caption": f"picture {i}"}) + "\n"
                             for i in range(2)))
    return ["plot", "similarity", "--model", str(tiny), "--pairs", str(pairs), "-n", "2", "--output", str(tmp / "s.png")]


def _serve_argv(tiny: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    return ["serve", "--model", str(tiny)]


def _distill_argv(tiny: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import unime.training.distill as distill

    def stop(*args: Any, **kwargs: Any) -> None:
        raise _Stop

    monkeypatch.setattr(distill, "apply_tuning", stop)
    data = tmp / "sentences.txt"
    data.write_text("".join(f"sentence number {i}\n" for i in range(4)))
    return ["distill", "--model", str(tiny), "--data", str(data), "--output-dir", str(tmp / "out"),
            "--batch-size", "2", "--mini-batch-size", "2"]


def _tune_argv(tiny: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import unime.training.mmeb_data as mmeb_data
    import unime.training.tune as tune

    def stop(*args: Any, **kwargs: Any) -> None:
        raise _Stop

    monkeypatch.setattr(mmeb_data, "load_mmeb_train", lambda *a, **k: object())
    monkeypatch.setattr(tune, "check_batchable", lambda *a, **k: None)
    monkeypatch.setattr(tune, "prepare_model", stop)
    return ["tune", "--model", str(tiny), "--data", str(tmp), "--image-root", str(tmp), "--output-dir", str(tmp / "o")]


def _align_argv(tiny: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import unime.training.align as align
    import unime.training.caption_data as caption_data

    def stop(*args: Any, **kwargs: Any) -> None:
        raise _Stop

    class Data:
        rows = [object()] * 64

    monkeypatch.setattr(caption_data, "read_caption_data", lambda *a, **k: Data())
    monkeypatch.setattr(align, "build_trainer", stop)
    return ["align", "--model", str(tiny), "--data", str(tmp / "c.csv"), "--output-dir", str(tmp / "o"),
            "--batch-size", "2"]


COMMAND_PATHS = {
    "encode": _encode_argv, "eval sts": _sts_argv, "caption": _caption_argv, "plot similarity": _plot_argv,
    "serve": _serve_argv, "distill": _distill_argv, "tune": _tune_argv, "align": _align_argv,
}
PATCHING = ("serve", "distill", "tune", "align")


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("command", list(COMMAND_PATHS))
def test_each_command_passes_trust_remote_code_only_with_the_flag(
    command: str, trusted: bool, recorded: list, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    build = COMMAND_PATHS[command]
    argv = build(tiny, tmp_path, monkeypatch) if command in PATCHING else build(tiny, tmp_path)
    if trusted:
        argv.append("--trust-remote-code")
    with pytest.raises(_Stop) if command in ("distill", "tune", "align") else contextlib.nullcontext():
        assert _cli(argv) == 0
    _assert_trust(recorded, tiny, trusted)
    if command == "distill":
        # The stage-1 teacher (MiniLM) is never given the MLLM's flag: it has --trust-teacher-code.
        assert [t for _, name, t in recorded if Path(name) != tiny and t] == []


# --- 3. remote images ------------------------------------------------------------------------------


PUBLIC = "93.184.215.14"  # a global unicast address; the patched connector sends it to the loopback server


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    """/img.png: a PNG; /to?u=URL: a 302 to URL. Every request is counted."""

    image = _png_bytes()
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits.append(self.path)
        parts = urlsplit(self.path)
        if parts.path == "/to":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["u"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def loopback_port() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port
    httpd.shutdown()
    httpd.server_close()


class _Network:
    """Patched name resolution and connections: names in ``answers`` resolve to the listed
    addresses (one list per successive lookup, the last repeating); a connection to PUBLIC reaches
    the loopback test server, any other connection is recorded and refused."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, port: int) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []
        self.connects: list[str] = []
        self.port = port
        real_getaddrinfo = socket.getaddrinfo
        real_connect = httpcore.SyncBackend.connect_tcp

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name in self.answers:
                self.lookups.append(name)
                queue = self.answers[name]
                addresses = queue.pop(0) if len(queue) > 1 else queue[0]
                return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                        for a in addresses]
            return real_getaddrinfo(host, port, *args, **kwargs)

        def connect_tcp(backend: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            ipaddress.ip_address(host)  # the guard hands the OS a checked address, never a name
            self.connects.append(host)
            if host == PUBLIC:
                return real_connect(backend, "127.0.0.1", self.port, *args, **kwargs)
            raise httpcore.ConnectError(f"test network: no route to {host}")

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", connect_tcp)

    def resolve(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = list(answers)


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch, loopback_port: int) -> _Network:
    _Handler.hits.clear()
    net = _Network(monkeypatch, loopback_port)
    net.resolve("images.example", [PUBLIC])
    return net


@pytest.fixture
def fetcher() -> Iterator[Any]:
    from unime.serve.remote import RemoteImageFetcher

    fetch = RemoteImageFetcher(max_bytes=100_000, timeout_s=5)
    yield fetch
    fetch.close()


def _refused(fetch: Any, url: str) -> Any:
    from unime.serve.errors import APIError

    with pytest.raises(APIError) as caught:
        fetch(url, "input[0].image")
    assert caught.value.status == 400, caught.value
    return caught.value


def test_the_patched_network_reaches_a_public_name(network: _Network, fetcher: Any) -> None:
    """The positive control of the tests below: a public name is fetched, through its checked address."""
    port = network.port
    assert fetcher(f"http://images.example:{port}/img.png", "input[0].image") == _Handler.image
    assert network.connects == [PUBLIC] and network.lookups == ["images.example"]


SPELLINGS = [
    "http://127.0.0.1/img.png", "http://localhost/img.png", "http://127.1/img.png", "http://2130706433/img.png",
    "http://0177.0.0.1/img.png", "http://0x7f.0.0.1/img.png", "http://0x7f000001/img.png",
    "http://017700000001/img.png", "http://0.0.0.0/img.png", "http://0/img.png", "http://[::1]/img.png",
    "http://[::]/img.png", "http://[::ffff:127.0.0.1]/img.png", "http://[::ffff:7f00:1]/img.png",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/img.png", "http://10.0.0.1/img.png", "http://172.16.0.1/img.png",
    "http://172.31.255.255/img.png", "http://192.168.1.1/img.png", "http://100.64.0.1/img.png",
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/img.png", "http://[fd00::1]/img.png",
    "http://[64:ff9b::a9fe:a9fe]/img.png", "http://[2002:7f00:1::]/img.png", "https://127.0.0.1/img.png",
    "http://127.0.0.1:8080/img.png", "http://[::ffff:169.254.169.254]/latest/meta-data/",
]


@pytest.mark.parametrize("url", SPELLINGS)
def test_every_spelling_of_a_private_target_is_refused_before_connecting(url: str, network: _Network,
                                                                         fetcher: Any) -> None:
    error = _refused(fetcher, url)
    assert error.code == "remote_address" and "not a public address" in str(error)
    assert network.connects == []


REDIRECT_TARGETS = [
    "http://127.0.0.1:{port}/img.png", "http://localhost:{port}/img.png", "http://[::1]:{port}/img.png",
    "http://2130706433:{port}/img.png", "http://10.0.0.5/img.png", "http://192.168.0.10/img.png",
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/img.png", "http://[::ffff:127.0.0.1]/img.png",
    "http://internal.example/img.png", "http://mixed.example/img.png",
]


@pytest.mark.parametrize("target", REDIRECT_TARGETS)
def test_a_redirect_from_a_public_host_to_a_private_target_is_refused(target: str, network: _Network,
                                                                      fetcher: Any) -> None:
    network.resolve("internal.example", ["10.1.2.3"])
    network.resolve("mixed.example", [PUBLIC, "192.168.7.7"])  # one bad answer among good ones
    port = network.port
    url = f"http://images.example:{port}/to?u={target.format(port=port)}"
    error = _refused(fetcher, url)
    assert error.code == "remote_address"
    assert network.connects == [PUBLIC]  # only the first, public hop was connected to
    assert _Handler.hits == [f"/to?u={target.format(port=port)}"]


def test_a_redirect_to_another_public_host_is_followed_and_a_long_chain_is_refused(network: _Network,
                                                                                    fetcher: Any) -> None:
    port = network.port
    network.resolve("cdn.example", [PUBLIC])
    assert fetcher(f"http://images.example:{port}/to?u=http://cdn.example:{port}/img.png", "p") == _Handler.image
    hop = f"http://images.example:{port}/img.png"
    for _ in range(4):
        hop = f"http://images.example:{port}/to?u={hop.replace('?', '%3F').replace('=', '%3D')}"
    error = _refused(fetcher, hop)
    assert "redirects" in str(error)


def test_dns_rebinding_between_check_and_connect_cannot_reach_a_private_address(network: _Network,
                                                                               fetcher: Any) -> None:
    """The name answers a public address to the check, then loopback: the connection uses the
    checked address (one lookup per connection, never a second one by the OS), and the next
    connection, which resolves again, is refused."""
    port = network.port
    network.resolve("rebind.example", [PUBLIC], ["127.0.0.1"])
    assert fetcher(f"http://rebind.example:{port}/img.png", "p") == _Handler.image
    assert network.lookups == ["rebind.example"] and network.connects == [PUBLIC]
    error = _refused(fetcher, f"http://rebind.example:{port}/img.png")
    assert error.code == "remote_address" and "127.0.0.1" in str(error)
    assert network.connects == [PUBLIC]


class _StubModel:
    """The model contract, without a model: one fixed unit row per input."""

    def encode(self, inputs: list[Any], batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        rows = np.zeros((len(inputs), 4), dtype=np.float32)
        rows[:, 0] = 1.0
        return rows


@contextlib.contextmanager
def _client(**settings: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from unime.serve import ServeSettings, create_app

    with TestClient(create_app(_StubModel(), ServeSettings(model_name="stub", **settings))) as client:
        yield client


def test_remote_images_are_off_by_default_and_nothing_is_fetched(network: _Network) -> None:
    port = network.port
    with _client() as client:
        response = client.post("/v1/embeddings", json={"input": [{"image": f"http://images.example:{port}/img.png"}]})
    assert response.status_code == 400 and "--allow-remote-images" in response.text
    assert network.lookups == [] and network.connects == [] and _Handler.hits == []


def test_the_server_refuses_a_private_target_when_remote_images_are_on(network: _Network) -> None:
    port = network.port
    with _client(allow_remote_images=True) as client:
        good = client.post("/v1/embeddings", json={"input": [{"image": f"http://images.example:{port}/img.png"}]})
        bad = client.post("/v1/embeddings", json={"input": [{"image": f"http://2130706433:{port}/img.png"}]})
        redirect = client.post("/v1/embeddings", json={
            "input": [{"image": f"http://images.example:{port}/to?u=http://169.254.169.254/latest/meta-data/"}]})
    assert good.status_code == 200, good.text
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "remote_address"
    assert redirect.status_code == 400 and redirect.json()["error"]["code"] == "remote_address"
    assert network.connects == [PUBLIC, PUBLIC]


# --- 4. the API key ----------------------------------------------------------------------------------


def test_the_api_key_is_compared_in_constant_time() -> None:
    """The key check calls hmac.compare_digest, and no ``==`` / ``!=`` / ``in`` anywhere in the
    server touches the key (``is None`` checks aside)."""
    files = [*(ROOT / "src" / "unime" / "serve").glob("*.py"), ROOT / "src" / "unime" / "cli" / "serve.py"]
    app = ast.parse((ROOT / "src" / "unime" / "serve" / "app.py").read_text(encoding="utf-8"))
    check = next(n for n in ast.walk(app) if isinstance(n, ast.FunctionDef) and n.name == "_check_api_key")
    assert any(isinstance(n, ast.Call) and _dotted(n.func) == "hmac.compare_digest" for n in ast.walk(check))

    def mentions_key(node: ast.AST) -> bool:
        return any((isinstance(n, ast.Name) and "api_key" in n.id) or (isinstance(n, ast.Attribute) and "api_key" in n.attr)
                   for n in ast.walk(node))

    plain = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(not isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
                if mentions_key(node) and not all(isinstance(c, ast.Constant) and c.value is None
                                                  for c in node.comparators):
                    plain.append(f"{path.name}:{node.lineno}")
    assert plain == []


def test_the_api_key_never_reaches_logs_or_responses(caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-unime-" + secrets.token_hex(16)
    wrong = key[:-4] + "0000"
    caplog.set_level(logging.DEBUG)
    answers = []
    with _client(api_key=key) as client:
        for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {wrong}"},
                        {"Authorization": f"bearer {key}"}, {"Authorization": f"Basic {key}"},
                        {"Authorization": key}, {}, {"Authorization": f"Bearer {key} "},
                        {"Authorization": f"Bearer {wrong}", "X-Api-Key": wrong}):
            for method, path, body in (("POST", "/v1/embeddings", {"input": "hello"}), ("GET", "/v1/models", None),
                                       ("POST", "/v1/embeddings", {"input": 5})):
                response = client.request(method, path, headers=headers, json=body)
                answers.append((headers, path, response))
        docs = client.get("/openapi.json").text
    ok = [r.status_code for h, p, r in answers if h.get("Authorization") in (f"Bearer {key}", f"bearer {key}",
                                                                             f"Bearer {key} ") and p == "/v1/models"]
    assert ok == [200, 200, 200]
    assert {r.status_code for h, _, r in answers if not h.get("Authorization", "").lower().startswith(f"bearer {key}")} == {401}
    for _, _, response in answers:
        text = response.text + json.dumps(dict(response.headers))
        assert key not in text and wrong not in text
    assert key not in docs
    logged = caplog.text + "".join(record.getMessage() for record in caplog.records)
    assert caplog.records, "nothing was logged: the capture is not working"
    assert key not in logged and wrong not in logged


def test_unime_serve_does_not_log_its_api_key(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command line's own path: -v (debug) serve with --api-key and with UNIME_API_KEY, on a
    non-loopback host (the warning path), with the model load and the server run stubbed."""
    import uvicorn

    import unime
    from unime.cli import main

    key = "sk-unime-" + secrets.token_hex(16)
    folder = tmp_path / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("{}")
    started: list[Any] = []
    monkeypatch.setattr(unime, "load", lambda *a, **k: _StubModel())
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(app.state.settings))
    caplog.set_level(logging.DEBUG)
    assert main(["-v", "serve", "--model", str(folder), "--api-key", key, "--host", "0.0.0.0"]) == 0
    monkeypatch.setenv("UNIME_API_KEY", key)
    assert main(["-v", "serve", "--model", str(folder), "--host", "0.0.0.0"]) == 0
    assert [s.api_key for s in started] == [key, key]
    out = capsys.readouterr()
    assert caplog.records
    assert key not in caplog.text + out.out + out.err + "".join(r.getMessage() for r in caplog.records)
    assert key not in repr(started[0])  # the settings' repr (as a log line or traceback would show it)
