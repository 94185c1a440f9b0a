"""The embeddings server, run live on loopback: schema, limits, access control, batching.

Most tests use a deterministic stand-in model (inputs hashed into unit vectors) so they pin down
the server's plumbing exactly; the last group runs a tiny random Qwen2-VL through ``unime.load``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import io
import ipaddress
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from unime.serve import ServeSettings, create_app
from unime.serve.background import BackgroundServer
from unime.serve.batcher import DynamicBatcher, QueueFull
from unime.serve.errors import APIError
from unime.serve.remote import RemoteImageFetcher, is_public_address
from unime.serve.schema import parse_embedding_request

DIM = 16
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SETTINGS = ServeSettings(
    model_name="hash-model",
    max_batch_size=16,
    batch_wait_ms=30.0,
    max_queued_items=64,
    max_items_per_request=8,
    max_text_chars=100,
    max_image_bytes=4000,
    max_image_pixels=64 * 64,
    max_body_bytes=64_000,
    api_key=KEY,
)


def hash_vector(item: Any) -> np.ndarray:
    """A unit vector determined by the input's text, instruction and image pixels."""
    if isinstance(item, str):
        item = {"text": item}
    elif isinstance(item, Image.Image):
        item = {"image": item}
    digest = hashlib.sha256()
    for key in sorted(item):
        value = item[key]
        digest.update(key.encode())
        if isinstance(value, Image.Image):
            digest.update(f"{value.mode}{value.size}".encode() + value.tobytes())
        else:
            digest.update(value.encode())
    rng = np.random.default_rng(int.from_bytes(digest.digest()[:8], "little"))
    vector = rng.standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


class HashModel:
    """The model contract without a network: ``encode`` hashes each input to a unit row."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []

    def encode(self, inputs: list[Any], batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        self.batch_sizes.append(len(inputs))
        time.sleep(self.delay_s)  # a forward pass costs time, so concurrent requests can meet
        if any(isinstance(x, str) and x == "__reject__" for x in inputs):
            raise ValueError("this input is refused by the model")
        return np.stack([hash_vector(x) for x in inputs])


@pytest.fixture(scope="module")
def hash_model() -> HashModel:
    return HashModel(delay_s=0.02)


@pytest.fixture(scope="module")
def server(hash_model: HashModel) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(hash_model, SETTINGS)) as live:
        yield live


@pytest.fixture()
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=20) as c:
        yield c


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` but carries no real pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"\x00" * 8) + chunk(b"IEND", b"")


def embeddings_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


def error_of(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


# --- schema and values -----------------------------------------------------------------------------


def test_single_string_gives_openai_response_with_encode_values(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"input": "a red square", "model": "hash-model"})
    body = response.json()
    assert body["object"] == "list" and body["model"] == "hash-model"
    assert body["data"][0]["object"] == "embedding" and body["data"][0]["index"] == 0
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}  # whitespace words: no tokenizer
    np.testing.assert_array_equal(embeddings_of(response), hash_vector("a red square")[None])


def test_list_of_strings_keeps_order(client: httpx.Client) -> None:
    texts = ["one", "two words", "three more words"]
    response = client.post("/v1/embeddings", json={"input": texts})
    assert [row["index"] for row in response.json()["data"]] == [0, 1, 2]
    np.testing.assert_array_equal(embeddings_of(response), np.stack([hash_vector(t) for t in texts]))


def test_data_url_and_bare_base64_images_match_encode_of_decoded_image(client: httpx.Client) -> None:
    image = noise_image(24, 16)
    bare = base64.b64encode(png_bytes(image)).decode()
    # Line-wrapped base64 (as many encoders write it) is the same image.
    wrapped = "\n".join(bare[i : i + 76] for i in range(0, len(bare), 76))
    response = client.post("/v1/embeddings", json={"input": [{"image": data_url(image)}, {"image": wrapped}]})
    expected = hash_vector(image)
    np.testing.assert_array_equal(embeddings_of(response), np.stack([expected, expected]))
    assert response.json()["usage"]["prompt_tokens"] == 0  # image tokens are not counted


def test_mixed_items_pass_text_image_and_instruction_to_the_model(client: httpx.Client) -> None:
    image = noise_image(20, 20, seed=3)
    items = [
        "plain text",
        {"text": "a caption", "image": data_url(image), "instruction": "Represent the pair"},
        {"text": "only text in an object"},
    ]
    response = client.post("/v1/embeddings", json={"input": items})
    expected = [
        hash_vector("plain text"),
        hash_vector({"text": "a caption", "image": image, "instruction": "Represent the pair"}),
        hash_vector("only text in an object"),
    ]
    np.testing.assert_array_equal(embeddings_of(response), np.stack(expected))
    assert response.json()["usage"]["prompt_tokens"] == 2 + (2 + 3) + 5


def test_base64_encoding_is_little_endian_float32(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"input": ["x", "y"], "encoding_format": "base64"})
    rows = [np.frombuffer(base64.b64decode(r["embedding"]), dtype="<f4") for r in response.json()["data"]]
    np.testing.assert_array_equal(np.stack(rows), np.stack([hash_vector("x"), hash_vector("y")]))


def test_dimensions_truncates_then_renormalises(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"input": "cut me", "dimensions": 4})
    head = hash_vector("cut me")[:4]
    got = embeddings_of(response)[0]
    np.testing.assert_allclose(got, head / np.sqrt((head**2).sum()), rtol=1e-6)
    assert got.shape == (4,) and abs(float(got @ got) - 1) < 1e-6


def test_pil_pixel_guard_is_set_while_serving_and_restored_after(hash_model: HashModel) -> None:
    default = Image.MAX_IMAGE_PIXELS
    with BackgroundServer(create_app(hash_model, ServeSettings(max_image_pixels=1234))):
        assert Image.MAX_IMAGE_PIXELS == 1234
    assert Image.MAX_IMAGE_PIXELS == default


def test_models_and_health(server: BackgroundServer, client: httpx.Client) -> None:
    assert client.get("/v1/models").json()["data"][0]["id"] == "hash-model"
    health = httpx.get(server.url + "/health")  # no key needed for liveness probes
    assert health.status_code == 200 and health.json()["status"] == "ok"


# --- access control and limits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}], ids=str
)
def test_api_key_is_required_on_v1_routes(server: BackgroundServer, headers: dict[str, str]) -> None:
    for method, path in (("POST", "/v1/embeddings"), ("GET", "/v1/models")):
        response = httpx.request(method, server.url + path, json={"input": "x"}, headers=headers)
        assert response.status_code == 401
        assert error_of(response)["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"input": ["t"] * 9}, "input", "max_items_per_request"),
        ({"input": ["ok", "x" * 101]}, "input[1]", "max_text_chars"),
        ({"input": [{"text": "ok", "instruction": "i" * 101}]}, "input[0].instruction", "max_text_chars"),
        ({"input": [{"image": data_url(noise_image(48, 48))}]}, "input[0].image", "max_image_bytes"),
        (
            {"input": ["ok", {"image": data_url(Image.new("RGB", (100, 50)))}]},
            "input[1].image",
            "max_image_pixels",
        ),
        (
            {"input": [{"image": base64.b64encode(png_header_only(100_000, 100_000)).decode()}]},
            "input[0].image",
            "max_image_pixels",
        ),
    ],
    ids=["items", "text", "instruction", "image-bytes", "image-pixels", "pixel-bomb-header"],
)
def test_size_limits_answer_413_naming_limit_and_item(
    client: httpx.Client, payload: dict[str, Any], param: str, code: str
) -> None:
    response = client.post("/v1/embeddings", json=payload)
    assert response.status_code == 413, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)
    assert code in error["message"] and param in error["message"]


def test_body_limit_applies_to_declared_and_chunked_bodies(client: httpx.Client) -> None:
    big = b'{"input": "' + b"a" * 70_000 + b'"}'
    declared = client.post("/v1/embeddings", content=big)
    assert declared.status_code == 413 and error_of(declared)["code"] == "max_body_bytes"

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent with chunked transfer encoding
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    chunked = client.post("/v1/embeddings", content=chunks())
    assert chunked.status_code == 413 and error_of(chunked)["code"] == "max_body_bytes"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"input": ["a",', 400, "malformed JSON at line 1"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"model": "hash-model"}', 400, "no 'input'"),
        (b'{"input": 5}', 400, "'input' must be"),
        (b'{"input": []}', 400, "empty list"),
        (b'{"input": [1, 2, 3]}', 400, "token-id"),
        (b'{"input": ["ok", 7]}', 400, "input[1] must be a string or an object"),
        (b'{"input": ["ok", "  "]}', 400, "input[1] is empty or blank"),
        (b'{"input": [{"instruction": "x"}]}', 400, "input[0] needs a 'text', an 'image' or a 'video'"),
        (b'{"input": [{"text": "x", "img": "y"}]}', 400, "unknown field(s) ['img']"),
        (b'{"input": [{"text": ["x"]}]}', 400, "input[0].text must be a string"),
        (b'{"input": [{"image": "not base64!"}]}', 400, "input[0].image: not valid base64"),
        (b'{"input": [{"image": "aGVsbG8gd29ybGQ="}]}', 400, "input[0].image: not a decodable image"),
        (b'{"input": [{"image": "data:text/plain;base64,aGk="}]}', 400, "is not an image"),
        (b'{"input": [{"image": "https://example.com/a.png"}]}', 400, "--allow-remote-images"),
        (b'{"input": "x", "encoding_format": "int8"}', 400, "'encoding_format' must be one of"),
        (b'{"input": "x", "dimensions": 0}', 400, "'dimensions' must be a positive integer"),
        (b'{"input": "x", "dimensions": "4"}', 400, "'dimensions' must be a positive integer"),
        (b'{"input": "x", "dimensions": true}', 400, "'dimensions' must be a positive integer"),
        (b'{"input": "x", "dimensions": 17}', 400, "exceeds the model's embedding size 16"),
        (b'{"input": "x", "model": "gpt-4"}', 404, "this server serves 'hash-model'"),
        (b'{"input": "__reject__"}', 400, "the model rejected the input"),
    ],
)
def test_malformed_requests_get_a_message_naming_the_problem(
    client: httpx.Client, body: bytes, status: int, needle: str
) -> None:
    response = client.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert needle in error_of(response)["message"]


def test_server_keeps_serving_after_refusals(server: BackgroundServer, client: httpx.Client) -> None:
    client.post("/v1/embeddings", content=b"{not json")
    client.post("/v1/embeddings", json={"input": "__reject__"})
    client.post(
        "/v1/embeddings", json={"input": [{"image": base64.b64encode(png_header_only(9999, 9999)).decode()}]}
    )
    httpx.post(server.url + "/v1/embeddings", json={"input": "x"})  # no key
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    np.testing.assert_array_equal(
        embeddings_of(client.post("/v1/embeddings", json={"input": "still"})), hash_vector("still")[None]
    )


# --- batching --------------------------------------------------------------------------------------


def test_concurrent_clients_share_batches_but_get_their_own_rows(
    server: BackgroundServer, hash_model: HashModel
) -> None:
    requests = [[f"client {i} item {j}" for j in range(1 + i % 3)] for i in range(16)]
    stats = server.app.state.batcher.stats
    before = stats.largest_batch

    def call(texts: list[str]) -> np.ndarray:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=20) as c:
            return embeddings_of(c.post("/v1/embeddings", json={"input": texts}))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, requests))
    for texts, got in zip(requests, results, strict=True):
        np.testing.assert_array_equal(got, np.stack([hash_vector(t) for t in texts]))
    # Requests carry at most 3 items: a larger model call means several requests were merged.
    assert max(stats.largest_batch, before) > 3 and max(hash_model.batch_sizes) <= SETTINGS.max_batch_size


def test_a_failing_input_fails_only_its_own_request(server: BackgroundServer) -> None:
    inputs = ["good 1", "__reject__", "good 2", "good 3"]

    def call(text: str) -> httpx.Response:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=20) as c:
            return c.post("/v1/embeddings", json={"input": text})

    with ThreadPoolExecutor(len(inputs)) as pool:
        responses = list(pool.map(call, inputs))
    assert [r.status_code for r in responses] == [200, 400, 200, 200]
    np.testing.assert_array_equal(embeddings_of(responses[2]), hash_vector("good 2")[None])


def test_batcher_refuses_beyond_queue_limit_and_skips_cancelled_requests() -> None:
    release = threading.Event()
    seen: list[list[str]] = []

    def encode(items: list[str]) -> np.ndarray:
        release.wait(10)
        seen.append(items)
        return np.ones((len(items), 2), dtype=np.float32)

    batcher = DynamicBatcher(encode, max_batch_size=2, max_wait_s=0.0, max_queued_items=3)
    batcher.start()
    try:
        first = batcher.submit(["a"])
        while batcher.queued_items:  # the worker has taken "a" and blocks in encode
            time.sleep(0.005)
        cancelled = batcher.submit(["b", "c"])
        kept = batcher.submit(["d"])
        with pytest.raises(QueueFull, match="max_queued_items=3"):
            batcher.submit(["e"])
        assert cancelled.cancel()
        release.set()
        assert first.result(10).embeddings.shape == (1, 2) and kept.result(10).embeddings.shape == (1, 2)
        assert seen == [["a"], ["d"]]
    finally:
        release.set()
        batcher.stop()


def test_batcher_retries_a_failed_merged_batch_request_by_request() -> None:
    release = threading.Event()
    seen: list[list[str]] = []

    def encode(items: list[str]) -> np.ndarray:
        release.wait(10)
        seen.append(list(items))
        if "bad" in items:
            raise ValueError("bad input")
        return np.array([[float(ord(item[0])), 0.0] for item in items], dtype=np.float32)

    batcher = DynamicBatcher(encode, max_batch_size=8, max_wait_s=0.0, max_queued_items=8)
    batcher.start()
    try:
        first = batcher.submit(["a"])
        while batcher.queued_items:
            time.sleep(0.005)
        futures = [batcher.submit(items) for items in (["b", "c"], ["bad"], ["d"])]
        release.set()
        assert first.result(10).embeddings[0, 0] == ord("a")
        assert futures[0].result(10).embeddings[:, 0].tolist() == [ord("b"), ord("c")]
        with pytest.raises(ValueError, match="bad input"):
            futures[1].result(10)
        assert futures[2].result(10).embeddings[0, 0] == ord("d")
        assert seen == [["a"], ["b", "c", "bad", "d"], ["b", "c"], ["bad"], ["d"]]
    finally:
        release.set()
        batcher.stop()


# --- remote images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
    ],
)
def test_only_public_addresses_may_be_fetched(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    small = png_bytes(noise_image(8, 8))

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/redirect-private":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{self.server.server_port}/small.png")
            self.end_headers()
            return
        body = self.small if self.path == "/small.png" else b"\x00" * 10_000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_remote_fetch_refuses_hosts_resolving_to_private_addresses(image_host: str) -> None:
    fetcher = RemoteImageFetcher(max_bytes=4000, timeout_s=5)
    port = image_host.rsplit(":", 1)[1]
    for url in (f"{image_host}/small.png", f"http://localhost:{port}/small.png", "http://169.254.169.254/x"):
        with pytest.raises(APIError, match="not a public address") as caught:
            fetcher(url, "input[0].image")
        assert caught.value.status == 400 and caught.value.code == "remote_address"
    fetcher.close()


def test_remote_fetch_downloads_limits_size_and_rechecks_redirects(image_host: str) -> None:
    # Loopback stands in for the internet here; 127.0.0.2 plays a private host.
    fetcher = RemoteImageFetcher(max_bytes=4000, timeout_s=5, allowed=lambda ip: str(ip) == "127.0.0.1")
    settings = ServeSettings(max_image_bytes=4000, allow_remote_images=True)
    request = parse_embedding_request({"input": [{"image": f"{image_host}/small.png"}]}, settings, fetcher)
    assert request.items[0].tobytes() == Image.open(io.BytesIO(_ImageHandler.small)).convert("RGB").tobytes()
    with pytest.raises(APIError, match="max_image_bytes=4000") as caught:
        fetcher(f"{image_host}/big.bin", "input[0].image")
    assert caught.value.status == 413
    with pytest.raises(APIError, match="127.0.0.2, which is not a public address"):
        fetcher(f"{image_host}/redirect-private", "input[0].image")
    fetcher.close()


# --- command line ----------------------------------------------------------------------------------


def _parse_serve_args(argv: list[str]) -> argparse.Namespace:
    from unime.cli import serve

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_cli_reads_api_key_from_environment_and_checks_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from unime.cli import CLIError, serve

    monkeypatch.setenv("UNIME_API_KEY", "from-env")
    settings = serve.settings_from_args(
        _parse_serve_args(["--model", "/models/my-unime/", "--max-items", "4"])
    )
    assert (settings.api_key, settings.model_name, settings.max_items_per_request) == (
        "from-env",
        "my-unime",
        4,
    )
    explicit = serve.settings_from_args(_parse_serve_args(["--model", "m", "--api-key", "given"]))
    assert explicit.api_key == "given"
    with pytest.raises(CLIError, match="max_image_pixels must be a positive integer"):
        serve.settings_from_args(_parse_serve_args(["--model", "m", "--max-image-pixels", "0"]))


# --- a real (tiny, random) model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_server(tiny_model_factory: Any) -> Iterator[tuple[Any, BackgroundServer]]:
    import unime

    model = unime.load(str(tiny_model_factory("qwen2_vl")))  # read only: the shared folder suffices
    settings = ServeSettings(model_name="tiny", batch_wait_ms=20.0)
    with BackgroundServer(create_app(model, settings)) as live:
        yield model, live


def test_tiny_model_embeddings_equal_encode_for_text_image_and_mixed(
    tiny_server: tuple[Any, BackgroundServer],
) -> None:
    model, live = tiny_server
    image = noise_image(40, 30, seed=7)
    items = [
        "a photo of a cat",
        {"image": data_url(image)},
        {"text": "a cat", "image": data_url(image), "instruction": "Find it"},
    ]
    expected_inputs = ["a photo of a cat", image, {"text": "a cat", "image": image, "instruction": "Find it"}]

    def call(payload: Any) -> np.ndarray:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            return embeddings_of(c.post("/v1/embeddings", json={"input": payload}))

    together = call(items)
    with ThreadPoolExecutor(3) as pool:  # the same inputs as three concurrent requests
        apart = np.concatenate(list(pool.map(call, [[item] for item in items])))
    expected = model.encode(expected_inputs, batch_size=32, show_progress_bar=False)
    np.testing.assert_allclose(together, expected, atol=1e-5)
    np.testing.assert_allclose(apart, expected, atol=1e-5)
    tokenizer = model.tokenizer
    with httpx.Client(base_url=live.url, timeout=60) as c:
        usage = c.post("/v1/embeddings", json={"input": "a photo of a cat"}).json()["usage"]
    assert usage["prompt_tokens"] == len(tokenizer("a photo of a cat", add_special_tokens=False)["input_ids"])
