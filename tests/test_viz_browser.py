"""The HTML viewer in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

Skipped only when no Chromium is installed (``make setup`` installs it where apt-get is available).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from twostream.data.classes import ClassTable
from twostream.viz import GraphView, node_id_map, write_html

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_viz import class_graph, photo_and_map

pytestmark = pytest.mark.browser

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")  # small /dev/shm in containers


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = _chromium()
    if binary is None:
        reason = "no Chromium installed (apt-get install chromium chromium-driver, or make setup as root)"
        print(f"skipping browser tests: {reason}")
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.fail("Chromium is installed but chromedriver is not: apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")  # new and empty
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    assert driver.execute_script("return document.body.dataset.ready") == "1", "the viewer script did not finish"


def _nodes(driver, where: str, cls: str = "") -> list[int]:
    found = driver.find_elements("css selector", f"section.view.active {where} circle.node{cls}")
    return sorted(int(e.get_attribute("data-node")) for e in found)


def test_viewer_draws_nodes_and_highlights_a_clicked_node(browser, tmp_path):
    img, sem = photo_and_map(n_segments=14, size=120)
    truth = np.where(sem == sem.max(), 1, sem)
    pred_graph, truth_graph = class_graph(sem), class_graph(truth)
    page = write_html(tmp_path / "graph.html", img, [
        GraphView("prediction", pred_graph, sem, scene_topk=[("kitchen", 0.6), ("bathroom", 0.2)]),
        GraphView("ground truth", truth_graph, truth)], title="coffee & cream.jpg")
    _open(browser, page)

    # (b) one SVG node per graph node, in the graph drawing and on the image
    n = pred_graph.num_nodes
    assert _nodes(browser, ".graphbox") == list(range(n))
    assert _nodes(browser, "svg.marks") == list(range(n))
    assert len(browser.find_elements("css selector", "section.view.active .graphbox line.edge")) == \
        pred_graph.num_edges // 2

    # (c) click the node with the most neighbours: it is selected, exactly its graph neighbours are highlighted
    src, dst = pred_graph.edge_index.numpy()
    k = int(np.bincount(src, minlength=n).argmax())
    expected = sorted(int(j) for j in dst[src == k])
    browser.find_elements("css selector", "section.view.active .graphbox circle.node")[k].click()
    assert _nodes(browser, ".graphbox", ".selected") == [k]
    assert _nodes(browser, ".graphbox", ".neighbour") == expected
    assert _nodes(browser, "svg.marks", ".neighbour") == expected
    dimmed = _nodes(browser, ".graphbox", ".dimmed")
    assert dimmed == sorted(set(range(n)) - set(expected) - {k})
    name = browser.find_element("css selector", "section.view.active .info h3").text
    assert name == pred_graph.class_table.short_name(int(pred_graph.labels[k]))
    listed = browser.find_elements("css selector", "section.view.active .info li")
    assert sorted(int(li.get_attribute("data-node")) for li in listed) == expected

    # ... and its region is drawn: the canvas leaves exactly the node's pixels clear (outline opaque) and dims the rest
    mask = node_id_map(sem, pred_graph) == k
    drawn = browser.execute_script("""
        const c = document.querySelector("section.view.active canvas.region");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        const alpha = new Array(c.width * c.height);
        for (let p = 0; p < alpha.length; p++) alpha[p] = d[4 * p + 3];
        return [c.width, c.height, c.dataset.regionPixels, alpha];""")
    width, height, region_pixels, alpha = drawn
    alpha = np.array(alpha).reshape(height, width)
    assert (height, width) == mask.shape and int(region_pixels) == mask.sum()
    assert ((alpha == 0) | (alpha == 255))[mask].all() and (alpha[mask] == 0).any()
    assert ((alpha > 0) & (alpha < 255))[~mask].all()

    # clicking the image selects the node under the pointer (through the embedded node-id map)
    other = next(i for i in range(n) if i != k)
    ys, xs = np.nonzero(node_id_map(sem, pred_graph) == other)
    j = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))  # a pixel of the region near its middle
    box = browser.find_element("css selector", "section.view.active .imgbox")
    from selenium.webdriver.common.action_chains import ActionChains

    rect = box.rect
    ActionChains(browser).move_to_element_with_offset(
        box, (xs[j] + 0.5) / img.shape[1] * rect["width"] - rect["width"] / 2,
        (ys[j] + 0.5) / img.shape[0] * rect["height"] - rect["height"] / 2).click().perform()
    assert _nodes(browser, ".graphbox", ".selected") == [other]

    # (d) a screenshot of the highlighted view
    shot = tmp_path / "viewer.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    # the ground-truth tab shows the other graph; nothing was fetched and nothing went wrong in the console
    browser.find_element("css selector", '.tabs button[data-tab="1"]').click()
    assert _nodes(browser, ".graphbox") == list(range(truth_graph.num_nodes))
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [u for u in fetched if not u.startswith("data:")]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_viewer_shows_hostile_names_as_text(browser, tmp_path):
    evil = "<img src=x onerror=\"document.title='pwned'\"><script>alert(1)</script>"
    table = ClassTable("evil", ("other", evil, "sky"), np.array([[0, 0, 0], [200, 30, 30], [30, 30, 200]]))
    img = np.full((40, 60, 3), 128, np.uint8)
    sem = np.ones((40, 60), np.int64)
    sem[:15] = 2
    name = "a&b \"quoted\" 'single' <x>.jpg"
    page = write_html(tmp_path / "evil.html", img, GraphView(evil, class_graph(sem, table), sem), title=name)
    _open(browser, page)  # an alert would make the next command fail with UnexpectedAlertPresentException
    assert browser.title.startswith(name)
    assert browser.find_element("css selector", "header h1").text == name
    browser.find_elements("css selector", "section.view.active .graphbox circle.node")[0].click()
    assert evil in browser.find_element("css selector", "section.view.active .info").text
    assert not browser.find_elements("css selector", "img[src='x']")


@pytest.mark.parametrize("labels", [(), (3,)], ids=["no-nodes", "one-node"])
def test_viewer_handles_empty_and_single_node_graphs(browser, tmp_path, labels):
    img, _ = photo_and_map(size=60)
    sem = np.full(img.shape[:2], labels[0] if labels else 0, np.int64)
    graph = class_graph(sem)
    page = write_html(tmp_path / "g.html", img, GraphView("prediction", graph, sem))
    _open(browser, page)
    assert _nodes(browser, ".graphbox") == list(range(len(labels)))
    browser.find_element("css selector", "section.view.active .imgbox").click()  # on the region, or on nothing
    if labels:
        assert _nodes(browser, ".graphbox", ".selected") == [0] and not _nodes(browser, ".graphbox", ".neighbour")
        assert browser.find_element("css selector", "section.view.active .info h3").text == "sky"
    else:
        assert "no objects" in browser.find_element("css selector", "section.view.active .graphbox").text
        assert "no nodes" in browser.find_element("css selector", "section.view.active .info").text
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
