"""The ``messages`` form of ``POST /v1/embeddings`` (vLLM's chat form): the same vector as the equivalent
``input`` item, the same limits, refusals naming the field; and, on a real tiny model, the same vector
as the exported vLLM folder gives for the same messages through its chat template."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from test_serve import AUTH, SETTINGS, HashModel, data_url, embeddings_of, error_of, noise_image, png_bytes

from unime.serve import ServeSettings, create_app
from unime.serve.background import BackgroundServer

INSTRUCTION = "Represent the given image with the following question:"


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(HashModel(), SETTINGS)) as live:
        yield live


@pytest.fixture()
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=20) as c:
        yield c


def user(*parts: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def both(client: httpx.Client, messages: list[dict[str, Any]], item: Any, **extra: Any) -> tuple[Any, Any]:
    """The embeddings of a messages request and of the equivalent input request."""
    by_messages = client.post("/v1/embeddings", json={"messages": messages, **extra})
    by_input = client.post("/v1/embeddings", json={"input": [item], **extra})
    return embeddings_of(by_messages), embeddings_of(by_input)


def test_a_string_content_is_a_text(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"model": "hash-model",
                                                   "messages": [{"role": "user", "content": "a dog on a beach"}]})
    body = response.json()
    assert response.status_code == 200 and len(body["data"]) == 1 and body["data"][0]["index"] == 0
    assert body["usage"]["prompt_tokens"] == 5  # words: the stand-in model has no tokenizer
    got, expected = both(client, [{"role": "user", "content": "a dog on a beach"}], "a dog on a beach")
    np.testing.assert_array_equal(got, expected)


def test_a_system_message_is_the_instruction(client: httpx.Client) -> None:
    for system in (INSTRUCTION, [text_part(INSTRUCTION)]):
        messages = [{"role": "system", "content": system}, user(text_part("what is it?"))]
        got, expected = both(client, messages, {"text": "what is it?", "instruction": INSTRUCTION})
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("image_first", [True, False])
def test_image_text_and_instruction_match_the_input_item_in_any_part_order(client: httpx.Client,
                                                                          image_first: bool) -> None:
    url = data_url(noise_image(20, 12, seed=3))
    parts = [image_part(url), text_part("what is it?")]
    messages = [{"role": "system", "content": INSTRUCTION}, user(*(parts if image_first else parts[::-1]))]
    got, expected = both(client, messages, {"text": "what is it?", "image": url, "instruction": INSTRUCTION})
    np.testing.assert_array_equal(got, expected)


def test_an_image_alone_and_the_output_options(client: httpx.Client) -> None:
    url = data_url(noise_image(16, 16, seed=4))
    got, expected = both(client, [user(image_part(url))], {"image": url})
    np.testing.assert_array_equal(got, expected)
    got, expected = both(client, [user(image_part(url))], {"image": url}, dimensions=4)
    assert got.shape == (1, 4)
    np.testing.assert_array_equal(got, expected)
    response = client.post("/v1/embeddings", json={"messages": [user(image_part(url))], "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(response.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, embeddings_of(client.post("/v1/embeddings",
                                                                     json={"input": {"image": url}}))[0])


def _big_png() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(noise_image(60, 60, seed=9))).decode()


REFUSALS = [
    ({"input": "x", "messages": [{"role": "user", "content": "x"}]}, 400, "messages", "both 'input' and 'messages'"),
    ({"messages": "a dog"}, 400, "messages", "must be a list of messages"),
    ({"messages": []}, 400, "messages", "empty list"),
    ({"messages": ["a dog"]}, 400, "messages[0]", "must be an object with role and content"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, 400, "messages[0]", "unknown field"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, 400,
     "messages[1].role", "must be one of ['system', 'user']"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}, 400, "messages[1]",
     "only one user message"),
    ({"messages": [{"role": "system", "content": "i"}, {"role": "system", "content": "j"},
                   {"role": "user", "content": "x"}]}, 400, "messages[1]", "only one system message"),
    ({"messages": [{"role": "system", "content": "i"}]}, 400, "messages", "no user message"),
    ({"messages": [{"role": "system", "content": [text_part("i"), text_part("j")]},
                   {"role": "user", "content": "x"}]}, 400, "messages[0].content", "one text part"),
    ({"messages": [user(text_part("a"), text_part("b"))]}, 400, "messages[0].content[1]", "at most one text part"),
    ({"messages": [user(image_part("data:image/png;base64,AAAA"), image_part("data:image/png;base64,AAAA"))]},
     400, "messages[0].content[1]", "at most one image part"),
    ({"messages": [user({"type": "input_audio", "input_audio": {}})]}, 400, "messages[0].content[0]",
     "of type 'text' or 'image_url', not 'input_audio'"),
    ({"messages": [user({"type": "image_url", "image_url": "data:image/png;base64,AAAA"})]}, 400,
     "messages[0].content[0].image_url", "must be an object"),
    ({"messages": [user(image_part("https://example.com/dog.png"))]}, 400, "messages[0].content[0].image_url",
     "image URLs are disabled"),
    ({"messages": [user(image_part("data:image/png;base64,bm90IGFuIGltYWdl"))]}, 400,
     "messages[0].content[0].image_url", "not a decodable image"),
    ({"messages": [user(text_part("x"), image_part(_big_png()))]}, 413, "messages[0].content[1].image_url",
     "the limit is max_image_bytes"),
    ({"messages": [user(text_part("x" * 101))]}, 413, "messages[0].content[0].text", "max_text_chars=100"),
    ({"messages": [{"role": "user", "content": "x" * 101}]}, 413, "messages[0].content", "max_text_chars=100"),
    ({"messages": [{"role": "system", "content": "  "}, {"role": "user", "content": "x"}]}, 400,
     "messages[0].content", "empty or blank"),
    ({"messages": [user()]}, 400, "messages[0].content", "empty list"),
    ({"messages": [user(text_part("x"))], "dimensions": 0}, 400, "dimensions", "positive integer"),
]


@pytest.mark.parametrize(("payload", "status", "param", "phrase"), REFUSALS,
                         ids=[f"{i}-{r[2]}" for i, r in enumerate(REFUSALS)])
def test_refusals_name_the_field(client: httpx.Client, payload: dict[str, Any], status: int, param: str,
                                 phrase: str) -> None:
    response = client.post("/v1/embeddings", json=payload)
    error = error_of(response)
    assert response.status_code == status, response.text
    assert error["param"] == param and phrase in error["message"], error


def test_the_published_schema_describes_the_messages_form(server: BackgroundServer) -> None:
    body = httpx.get(server.url + "/openapi.json").json()["paths"]["/v1/embeddings"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["oneOf"] == [{"required": ["input"]}, {"required": ["messages"]}]
    message = schema["properties"]["messages"]["items"]
    assert message["properties"]["role"]["enum"] == ["system", "user"]


# --- a real model, and the exported vLLM folder ------------------------------------------------------


@pytest.fixture(scope="module")
def joint_model(tiny_model_factory: Any, one_thread: None) -> tuple[Any, str]:
    import unime

    path = str(tiny_model_factory("qwen2_vl"))
    return unime.load(path, mode="joint"), path


def test_tiny_model_messages_equal_input_and_the_exported_template(joint_model: tuple[Any, str],
                                                                    tmp_path: Any) -> None:
    """The server's messages form and vLLM's rendering of the same messages with the exported template
    (read here by transformers: the template, the processor, the last token of the final hidden state)
    give one vector: the two servers answer alike."""
    import torch
    from test_export_vllm import pooled, processor_of
    from transformers import AutoModelForImageTextToText

    from unime.export.vllm import export_vllm

    image = noise_image(40, 30, seed=7)
    url = data_url(image)
    cases = [
        ([{"role": "user", "content": "a photo of a cat"}], "a photo of a cat", {"text": "a photo of a cat"}),
        ([user(image_part(url))], {"image": url}, {"image": image}),
        ([{"role": "system", "content": INSTRUCTION}, user(text_part("a cat"), image_part(url))],
         {"text": "a cat", "image": url, "instruction": INSTRUCTION},
         {"text": "a cat", "image": image, "instruction": INSTRUCTION}),
    ]
    model, path = joint_model
    out = tmp_path / "vllm"
    export_vllm(path, out, mode="joint")
    hf = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32).eval()
    processor = processor_of(out)
    settings = ServeSettings(model_name="tiny", max_batch_size=8, batch_wait_ms=1.0)
    with BackgroundServer(create_app(model, settings)) as live, \
            httpx.Client(base_url=live.url, timeout=60) as c:
        for messages, item, decoded in cases:
            got, expected = both(c, messages, item)
            np.testing.assert_allclose(got, expected, atol=1e-6)
            vllm_like, _ = pooled(hf, processor, decoded)
            np.testing.assert_allclose(got[0], vllm_like, atol=2e-5)
