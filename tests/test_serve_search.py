"""Search over HTTP (``unime serve --index``): the API, the item images, the limits, the body-read
deadline, and the page in a real headless browser (Debian's chromium driven by selenium)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_serve import AUTH, KEY, HashModel, data_url, error_of, hash_vector, noise_image

from unime.index import Item, open_index, write_index
from unime.serve import ServeSettings, create_app
from unime.serve.background import BackgroundServer

pytest.importorskip("faiss")

SETTINGS = ServeSettings(model_name="hash-model", batch_wait_ms=5.0, max_text_chars=100, max_image_bytes=40_000,
                         max_image_pixels=256 * 256, max_body_bytes=200_000, api_key=KEY, body_timeout_s=1.0)
TEXTS = ["a dog runs on the beach", "a red bicycle", "two children play football", "snow on the mountains"]


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory) -> Path:
    """An index of 4 texts and 6 photos whose vectors are the hash model's (so a query equal to an item
    finds it first with score 1)."""
    root = tmp_path_factory.mktemp("search")
    items, vectors = [], []
    for number, text in enumerate(TEXTS):
        items.append(Item(f"t{number}", text=text))
        vectors.append(hash_vector(text))
    for number in range(6):
        image = noise_image(48, 40, seed=number)
        path = root / f"photo{number}.png"
        image.save(path)
        items.append(Item(f"photo{number}.png", image=str(path)))
        vectors.append(hash_vector(image))
    return write_index(np.stack(vectors), items, root / "idx", kind="flat", model_name="hash-model")


@pytest.fixture(scope="module")
def server(photo_index: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(HashModel(), SETTINGS, index=open_index(photo_index), ui=True)) as live:
        yield live


@pytest.fixture()
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=20) as c:
        yield c


def test_text_query_finds_the_equal_text_first_and_targets_filter(client: httpx.Client) -> None:
    body = client.post("/v1/search", json={"input": TEXTS[2], "top_k": 3, "target": "texts"}).json()
    assert body["model"] == "hash-model" and body["target"] == "texts"
    first = body["data"][0]
    assert (first["id"], first["kind"], first["text"], first["rank"]) == ("t2", "text", TEXTS[2], 1)
    assert first["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(body["data"]) == 3 and all(row["kind"] == "text" for row in body["data"])
    photos = client.post("/v1/search", json={"input": TEXTS[0], "top_k": 10, "target": "images"}).json()["data"]
    assert sorted(row["id"] for row in photos) == [f"photo{n}.png" for n in range(6)]
    assert all("image" not in row and row["image_url"].startswith("/v1/items/") for row in photos)
    scores = [row["score"] for row in photos]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores[0], max(float(hash_vector(TEXTS[0]) @ hash_vector(noise_image(48, 40, seed=n)))
                                              for n in range(6)), atol=1e-5)


def test_photo_query_finds_the_same_photo_and_its_file_is_served(client: httpx.Client) -> None:
    image = noise_image(48, 40, seed=4)
    body = client.post("/v1/search", json={"input": {"image": data_url(image)}, "top_k": 2, "target": "images"}).json()
    first = body["data"][0]
    assert first["id"] == "photo4.png" and first["score"] == pytest.approx(1.0, abs=1e-5)
    served = client.get(first["image_url"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content[:8] == b"\x89PNG\r\n\x1a\n"
    info = client.get("/v1/index").json()
    assert (info["count"], info["images"], info["texts"], info["index"]) == (10, 6, 4, "flat")


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [("/v1/items/0/image", 404, "item 0 ('t0') has no image"),
     ("/v1/items/10/image", 404, "no item 10: the index holds items 0 to 9"),
     ("/v1/items/-1/image", 404, "no item -1"),
     ("/v1/items/abc/image", 404, "no item 'abc': items are numbered 0 to 9"),
     ("/v1/items/..%2F..%2Fetc%2Fpasswd/image", 404, None)],
)
def test_only_indexed_photos_are_served(client: httpx.Client, path: str, status: int, message: str | None) -> None:
    response = client.get(path)
    assert response.status_code == status
    if message:
        assert message in error_of(response)["message"]


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [({"input": "x", "top_k": 0}, 400, "top_k", "'top_k' must be an integer from 1 to 100"),
     ({"input": "x", "top_k": 101}, 400, "top_k", "from 1 to 100"),
     ({"input": "x", "target": "videos"}, 400, "target", "'target' must be one of"),
     ({"input": ["a", "b"]}, 400, "input", "one query"),
     ({"top_k": 3}, 400, "input", "no 'input' field"),
     ({"input": "x" * 101}, 413, "input", "max_text_chars=100"),
     ({"input": {"image": "bm90IGFuIGltYWdl"}}, 400, "input.image", "image"),
     ({"input": "x", "model": "other"}, 404, "model", "is not served here")],
)
def test_bad_search_requests_get_the_api_refusals(client: httpx.Client, body: dict, status: int, param: str,
                                                  message: str) -> None:
    response = client.post("/v1/search", json=body)
    assert response.status_code == status
    error = error_of(response)
    assert error["param"] == param and message in error["message"]
    assert client.post("/v1/search", json={"input": "still serving"}).status_code == 200


def test_search_routes_need_the_api_key_and_the_page_does_not(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as anonymous:
        for response in (anonymous.post("/v1/search", json={"input": "x"}), anonymous.get("/v1/index"),
                         anonymous.get("/v1/items/4/image")):
            assert response.status_code == 401
        page = anonymous.get("/")
    assert page.status_code == 200 and "<title>unime search</title>" in page.text and "hash-model" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_without_ui_there_is_no_page_and_without_index_no_search(photo_index: Path) -> None:
    with BackgroundServer(create_app(HashModel(), SETTINGS, index=open_index(photo_index))) as live:
        assert httpx.get(live.url + "/").status_code == 404
        assert httpx.post(live.url + "/v1/search", json={"input": "x"}, headers=AUTH).status_code == 200
    with BackgroundServer(create_app(HashModel(), SETTINGS)) as live:
        assert httpx.post(live.url + "/v1/search", json={"input": "x"}, headers=AUTH).status_code == 404
    with pytest.raises(ValueError, match="the search page needs an index"):
        create_app(HashModel(), SETTINGS, ui=True)


def test_a_stalled_body_gets_408_and_the_server_keeps_answering(server: BackgroundServer) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as stalled:
        stalled.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"input\": \"ha")
        started = time.monotonic()
        # Meanwhile another client is served at once.
        answer = httpx.post(server.url + "/v1/embeddings", json={"input": "hello"}, headers=AUTH, timeout=5)
        assert answer.status_code == 200
        reply = b""
        while chunk := stalled.recv(4096):  # the server closes the connection after its answer
            reply += chunk
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"the request body did not arrive within body_timeout_s=1 seconds" in reply
    assert 0.8 <= waited < 5, waited


# --- the page in a real browser ---------------------------------------------------------------------


def _browser_or_skip() -> Any:
    """A headless chromium driven by selenium; in CI a missing browser fails instead of skipping."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"the page test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,900"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = _browser_or_skip()
    try:
        yield driver
    finally:
        driver.quit()


def _wait(browser: Any, condition: Any, timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def test_page_types_a_query_drops_a_photo_and_shows_refusals(server: BackgroundServer, browser: Any,
                                                             photo_index: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    # The server needs a key: the page says so and shows the key field.
    _wait(browser, lambda b: b.find_element(By.ID, "key").is_displayed())
    assert "needs an API key" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#target option[value='texts']").click()
    browser.find_element(By.ID, "query").send_keys(TEXTS[1] + "\n")
    _wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result")) == 4)
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
    assert cards[0].find_element(By.CSS_SELECTOR, ".text").text == TEXTS[1]
    assert cards[0].find_element(By.CSS_SELECTOR, ".score").text == "1.000"
    assert "4 results in" in browser.find_element(By.ID, "status").text
    assert not browser.find_element(By.ID, "error").is_displayed()

    # A photo chosen in the drop zone's file input searches at once: the same photo comes first.
    browser.find_element(By.ID, "query").clear()
    browser.find_element(By.CSS_SELECTOR, "#target option[value='images']").click()
    browser.find_element(By.ID, "photo").send_keys(str(photo_index.parent / "photo3.png"))
    _wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result img[src^='blob:']")) == 6)
    first = browser.find_elements(By.CSS_SELECTOR, "#results .result")[0]
    assert first.find_element(By.CSS_SELECTOR, "img").get_attribute("alt") == "photo3.png"
    assert first.find_element(By.CSS_SELECTOR, ".score").text == "1.000"
    loaded = browser.execute_script(
        "return Array.from(document.querySelectorAll('#results img')).every(i => i.complete && i.naturalWidth == 48)")
    assert loaded

    # A file the server refuses: the page shows the API's message and keeps the page usable.
    bad = tmp_path / "not-a-photo.png"
    bad.write_bytes(b"this is text, not a PNG")
    browser.find_element(By.ID, "photo").send_keys(str(bad))
    _wait(browser, lambda b: b.find_element(By.ID, "error").is_displayed())
    assert "input.image" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "clear-photo").click()
    browser.find_element(By.ID, "query").send_keys(TEXTS[3] + "\n")
    _wait(browser, lambda b: not b.find_element(By.ID, "error").is_displayed())
