"""The server under schema fuzzing, hostile bodies, load, overload and SIGTERM (issue 14, part 4).

The first group pins the failures the suite found, in-process and fast. The second runs the short
versions of ``benchmarks/reliability/server.py`` against live ``unime serve`` processes on
127.0.0.1 (a tiny random Qwen2-VL): schemathesis on the published schema, 64 clients for 10 s with
every answer compared with a reference encode of the client's own inputs, a flooded small queue,
and requests in flight at SIGTERM. The last test stops the shared server, so it stays last.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from unime.serve import BackgroundServer, ServeSettings, create_app
from unime.serve.errors import APIError
from unime.serve.schema import parse_embedding_request, parse_json_body

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reliability_server", ROOT / "benchmarks" / "reliability" / "server.py")
reliability = importlib.util.module_from_spec(_spec)
sys.modules["reliability_server"] = reliability  # dataclasses look their module up by name
_spec.loader.exec_module(reliability)

SETTINGS = ServeSettings(model_name="stub", max_items_per_request=8, max_queued_items=64, api_key="k")


class StubModel:
    def encode(self, inputs: list[Any], batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        return np.ones((len(inputs), 4), dtype=np.float32) / 2


# --- the failures found, pinned ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"input": "x", "dimensions": ' + b"9" * 5000 + b"}", "Exceeds the limit (4300 digits)"),
        (b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"input": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}", "nested too deeply"),
    ],
    ids=["5000-digit-integer", "deep-arrays", "deep-objects"],
)
def test_json_the_parser_cannot_take_is_a_400_not_a_500(body: bytes, needle: str) -> None:
    # Found by the hostile bodies: json.loads raised ValueError / RecursionError, answered 500.
    with pytest.raises(APIError, match=needle.replace("(", r"\(").replace(")", r"\)")) as caught:
        parse_json_body(body)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"input": "\ud800"}, "input"),
        ({"input": ["ok", "x \udfff"]}, "input[1]"),
        ({"input": [{"text": "ok", "instruction": "\udbff"}]}, "input[0].instruction"),
    ],
)
def test_lone_surrogates_are_refused_before_the_model(payload: dict[str, Any], param: str) -> None:
    # Before: they reached the tokenizer, failed the whole merged batch (every request in it was then
    # retried alone) and came back as "the model rejected the input".
    with pytest.raises(APIError, match="lone surrogate") as caught:
        parse_embedding_request(payload, SETTINGS, None)
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.fixture()
def stub_server() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(StubModel(), SETTINGS)) as live:
        yield live


def test_a_client_hanging_up_mid_body_leaves_no_traceback(
    stub_server: BackgroundServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by the raw requests: starlette's ClientDisconnect escaped read_limited_body.
    port = int(stub_server.url.rsplit(":", 1)[1])
    body = b'{"input": "x"}'
    head = f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\nContent-Length: {len(body) + 50}"
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(head.encode() + b"\r\n\r\n" + body)
        health = httpx.get(stub_server.url + "/health", timeout=10)
    assert health.status_code == 200
    assert not [r for r in caplog.records if "Exception in ASGI" in r.getMessage()]


def test_an_unexpected_exception_answers_in_openai_shape(
    stub_server: BackgroundServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unime.serve.app as app_module

    def broken(body: bytes) -> dict[str, Any]:
        raise KeyError("a bug")

    monkeypatch.setattr(app_module, "parse_json_body", broken)
    response = httpx.post(stub_server.url + "/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer k"})
    assert response.status_code == 500
    assert response.json()["error"] == {"message": "internal error: KeyError", "type": "server_error",
                                        "param": None, "code": None}


def test_published_schema_is_the_request_contract(stub_server: BackgroundServer) -> None:
    schema = httpx.get(stub_server.url + "/openapi.json").json()
    operation = schema["paths"]["/v1/embeddings"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"] == [{"required": ["input"]}, {"required": ["messages"]}]
    array = next(s for s in body["properties"]["input"]["anyOf"] if s.get("type") == "array")
    assert (array["minItems"], array["maxItems"]) == (1, SETTINGS.max_items_per_request)
    assert body["properties"]["encoding_format"]["enum"] == ["float", "base64"]
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    assert set(operation["responses"]) >= {"200", "400", "401", "404", "413", "503"}
    assert operation["security"] == [{"bearer": []}]
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


# --- the short reliability run against live servers -------------------------------------------------


@pytest.fixture(scope="module")
def live(tiny_model_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import unime

    model_path = str(tiny_model_factory("qwen2_vl"))
    logs = tmp_path_factory.mktemp("serve-logs")
    main = reliability.LiveServer(model_path, logs / "main.log", reliability.FUZZ_LIMITS).start()
    small = reliability.LiveServer(
        model_path, logs / "overload.log", ["--max-queued-items", "8", "--max-items", "8", "--max-batch-size", "8"]
    ).start()
    try:
        model = unime.load(model_path)  # the reference encoder, while both servers start
        yield {"main": main.wait_ready(), "small": small, "model": model, "out": logs}
    finally:
        main.stop()
        small.stop()


def _ok(part: dict[str, Any]) -> None:
    assert not part["problems"], json.dumps(part, indent=1, default=float)[:6000]


def test_schemathesis_on_the_published_schema_finds_no_server_error(live: dict[str, Any]) -> None:
    mode = reliability.SHORT
    result = reliability.fuzz(live["main"], mode.fuzz_examples, 14, live["out"] / "st", mode.min_fuzz_requests)
    _ok(result)
    assert result["requests"] >= mode.min_fuzz_requests and result["server_errors"] == 0
    assert result["requests_by_operation"].get("POST /v1/embeddings", 0) >= 100


def test_hostile_bodies_are_refused_with_4xx(live: dict[str, Any]) -> None:
    result = reliability.hostile(live["main"])
    _ok(result)
    assert result["requests"] >= 30


def test_64_clients_for_10_s_each_get_their_own_embeddings(live: dict[str, Any]) -> None:
    result = reliability.run_load(live["main"], live["model"], reliability.SHORT)
    _ok(result)
    assert result["clients"] == 64 and result["crossed"] == 0 and result["statuses"]["5xx_other"] == 0
    assert result["valid_answered"] >= 64 and result["statuses"]["4xx"] > 0  # both kinds were sent
    assert result["smallest_separation"] > 10 * result["atol"] >= result["max_deviation"]


def test_a_full_queue_answers_503_with_retry_after(live: dict[str, Any]) -> None:
    result = reliability.run_overload(live["small"].wait_ready(), live["model"], reliability.SHORT, 8)
    live["small"].stop()
    _ok(result)
    assert result["statuses"]["503"] > 0 and result["retry_after"] == {"1": result["statuses"]["503"]}


def test_sigterm_drains_the_requests_in_flight(live: dict[str, Any]) -> None:
    result = reliability.run_drain(live["main"], live["model"], reliability.SHORT)
    _ok(result)
    assert result["completed_200"] == result["requests"] and result["queued_at_sigterm"] > 0
