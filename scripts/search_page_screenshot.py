"""Take the screenshot of the search page in docs/figures/search-page.png.

    python scripts/search_page_screenshot.py --model unime-smol --index photos.idx \
        --query "two dogs playing in the snow" --output docs/figures/search-page.png

Serves the index in-process (as ``unime serve --index --ui`` does), types the query into the page in
headless chromium (Debian's ``chromium`` and ``chromium-driver``) and saves the page once every result
photo has loaded.
"""

from __future__ import annotations

import argparse
import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import unime
from unime.index import open_index
from unime.serve import ServeSettings, create_app
from unime.serve.background import BackgroundServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--index", required=True)
    parser.add_argument("--query", default="two dogs playing in the snow")
    parser.add_argument("--name", default="unime-smol", help="the model name the page shows")
    parser.add_argument("--output", default="docs/figures/search-page.png")
    args = parser.parse_args()
    index = open_index(args.index)
    model = unime.load(args.model)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,760"):
        options.add_argument(argument)
    with BackgroundServer(create_app(model, ServeSettings(model_name=args.name), index=index, ui=True)) as live:
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            browser.get(live.url + "/")
            browser.find_element(By.ID, "query").send_keys(args.query + "\n")
            WebDriverWait(browser, 60).until(lambda b: b.execute_script(
                "const imgs = document.querySelectorAll('#results img');"
                "return imgs.length > 0 && Array.from(imgs).every(i => i.complete && i.naturalWidth > 0)"))
            browser.save_screenshot(args.output)
        finally:
            browser.quit()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
