"""The web app in a real browser: `saelab app` as a subprocess, Debian's Chromium driven by
Playwright. Clicks through SAE → feature → explanation, screenshots every page, and checks that
planted `<script>`/`<img onerror>` tokens and explanations show as text and never run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SAELAB_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SCRIPT_TOKEN = "<script>window.__xss = 1</script>"
IMG_TOKEN = '<img src=x onerror="window.__xss = 2">'
SCRIPT_EXPLANATION = "fires on <script>window.__xss = 3</script> tags"
IMG_EXPLANATION = '<img src=x onerror="window.__xss = 4"> images'


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        message = f"no Chromium at {CHROMIUM}: apt-get install -y chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`saelab app --db FILE --port P` in a subprocess, ready when its health check answers."""

    def __init__(self, db: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "saelab.cli", "app", "--db", db, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        line = self.proc.stdout.readline()
        assert f"at {self.url}" in line, line
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

    def close(self, sig: int = signal.SIGTERM) -> None:
        """Stop `saelab app` with `sig` (SIGTERM: a process manager; SIGINT: Ctrl-C)."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        self.proc.send_signal(sig)
        t0 = time.monotonic()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        app = f"the app exited with {self.proc.wait()} after {time.monotonic() - t0:.1f} s"
        # `saelab app` stops its streamlit server on SIGTERM and SIGINT: none is left running
        deadline = time.monotonic() + 30  # a loaded machine can take seconds to stop it
        while any(_running(c) for c in children):
            assert time.monotonic() < deadline, (
                f"streamlit server(s) {children} outlived the app ({app}; "
                f"{[_state(c) for c in children]})"
            )
            time.sleep(0.1)
        assert children, "saelab app started no server process"


def _state(pid: str) -> str:
    """A process's state line and parent, for failure messages."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "gone"
    return " ".join(line for line in status if line.startswith(("State", "PPid")))


def _running(pid: str) -> bool:
    """Whether process `pid` still runs (a zombie awaiting its reaper has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.on("dialog", lambda d: (page.errors.append(f"dialog {d.message}"), d.dismiss()))
    page.goto(url)
    return page


def settle(page, text: str) -> None:
    """Wait until `text` shows and Streamlit has finished running the script."""
    page.get_by_text(text, exact=False).first.wait_for(timeout=20_000)
    page.wait_for_function(
        "!document.querySelector('[data-testid=stStatusWidget] [data-testid=stStatusWidgetRunningIcon]')",
        timeout=20_000,
    )
    page.wait_for_timeout(400)


def test_click_through_every_page(browser, app_db, tmp_path):
    from saelab import resultstore as results

    path, ids = app_db
    with results.ResultsStore(path).reading() as con:
        sae_id, feature, explanation = con.execute(
            "SELECT sae_id, feature, explanation FROM explanations WHERE status = 'ok' "
            "AND explainer = 'baseline' ORDER BY sae_id, feature LIMIT 1"
        ).fetchone()
        name = con.execute("SELECT name FROM saes WHERE sae_id = ?", [sae_id]).fetchone()[0]
    server = Server(path)
    shots = []
    try:
        page = open_page(browser, server.url + "/saes")  # the landing page by its own name
        settle(page, "FVU vs L0")
        assert "Page not found" not in page.inner_text("body")
        page.goto(server.url)
        settle(page, "FVU vs L0")
        shots.append(_shot(page, tmp_path, "saes"))
        # SAE -> its features
        page.get_by_label("Open an SAE's features").click()
        page.get_by_role("option", name=name).click()
        page.get_by_role("button", name="Browse features").click()
        page.wait_for_url("**/feature?*")
        settle(page, "Top activations")
        assert f"sae={sae_id}" in page.url
        shots.append(_shot(page, tmp_path, "feature"))
        # -> the feature with an explanation, through the URL a user would share
        page.goto(f"{server.url}/feature?sae={sae_id}&feature={feature}")
        settle(page, "Explanations")
        main = page.inner_text("[data-testid=stMain]")
        assert f"Feature {feature}" in main and explanation in main
        assert "�" not in main
        shots.append(_shot(page, tmp_path, "feature_explained"))
        # "test your own text": the latent's activation on each typed token, on hover
        page.get_by_placeholder("Type text").fill("The city of <i>Paris</i>\n\nis big")
        page.get_by_role("button", name="Run on this text").click()
        box = page.locator(".saelab-test-text").first
        box.wait_for(timeout=60_000)
        assert "<i>Paris</i>" in box.inner_text() and box.locator("[title^=activation]").count() > 5
        # Search by explanation text, open the result
        page.get_by_role("link", name="Search").click()
        settle(page, "Search features")
        page.get_by_label("Explanation contains").fill(explanation[:12])
        page.keyboard.press("Enter")
        settle(page, "features (strongest first)")
        shots.append(_shot(page, tmp_path, "search"))
        # every SAE is searched: open this SAE's hit (its button's key names SAE and latent)
        hit = f"_{sae_id}_{feature}"
        page.locator(f"[class*='{hit} '] button, [class$='{hit}'] button").first.click()
        page.wait_for_url(f"**/feature?*feature={feature}*")
        settle(page, "Explanations")
        assert explanation in page.inner_text("[data-testid=stMain]")
        for link, text in (
            ("Circuits", "No circuits"),
            ("Steering", "Playground"),
            ("Compare", "best value"),
        ):
            page.get_by_role("link", name=link).click()
            settle(page, text)
            shots.append(_shot(page, tmp_path, link.lower()))
        assert not page.errors, page.errors
    finally:
        server.close()
    print("screenshots:", *shots, sep="\n  ")
    assert all(s.stat().st_size > 10_000 for s in shots)


def test_planted_markup_shows_as_text_and_never_runs(browser, app_db, tmp_path):
    from saelab import resultstore as results

    path, _ = app_db
    db = tmp_path / "xss.duckdb"
    shutil.copy(path, db)
    with results.ResultsStore(db, "write").transaction() as con:
        sae_id, feature, tokens, acts, sha = con.execute(
            "SELECT e.sae_id, e.feature, e.tokens, e.acts, s.model_sha256 FROM feature_examples e "
            "JOIN saes s USING (sae_id) WHERE e.kind = 'top' ORDER BY e.activation DESC LIMIT 1"
        ).fetchone()
        peak = max(range(len(acts)), key=acts.__getitem__)
        planted = {tokens[peak]: SCRIPT_TOKEN, tokens[0 if peak else 1]: IMG_TOKEN}
        for token_id, text in planted.items():
            con.execute(
                "UPDATE vocab SET token = ? WHERE model_sha256 = ? AND token_id = ?",
                [text, sha, token_id],
            )
        # no tokenizer for this model name: windows are drawn from the planted vocab strings
        con.execute("UPDATE saes SET model = 'planted-model' WHERE sae_id = ?", [sae_id])
        con.execute("DELETE FROM explanations WHERE sae_id = ? AND feature = ?", [sae_id, feature])
        for explainer, text in (("llm", SCRIPT_EXPLANATION), ("baseline", IMG_EXPLANATION)):
            con.execute(
                "INSERT INTO explanations (sae_id, feature, explainer, status, explanation, "
                "n_examples) VALUES (?, ?, ?, 'ok', ?, 3)",
                [sae_id, feature, explainer, text],
            )
    server = Server(str(db))
    try:
        page = open_page(browser, f"{server.url}/feature?sae={sae_id}&feature={feature}")
        settle(page, "Explanations")
        page.wait_for_timeout(1000)  # time for anything planted to fire
        main = page.inner_text("[data-testid=stMain]")
        for text in (SCRIPT_TOKEN, IMG_TOKEN, SCRIPT_EXPLANATION, IMG_EXPLANATION):
            assert text in main, text
        assert page.evaluate("window.__xss") is None
        assert page.locator("[data-testid=stMain] img[onerror]").count() == 0
        assert page.locator("[data-testid=stMain] script").count() == 0
        _shot(page, tmp_path, "xss_feature")
        page.get_by_role("link", name="Search").click()
        settle(page, "Search features")
        page.get_by_label("Explanation contains").fill("<script>")
        page.keyboard.press("Enter")
        settle(page, "features (strongest first)")
        assert page.evaluate("window.__xss") is None
        assert not page.errors, page.errors
    finally:
        server.close()


def _shot(page, folder: Path, name: str) -> Path:
    out = folder / f"{name}.png"
    page.screenshot(path=str(out), full_page=True)
    return out


def test_playground_generate_with_the_defaults(browser, app_db, db_copy, tmp_path):
    """Steering page, Generate with the page's defaults (a live latent, the strength calibrated
    to the target KL, the DiffMean baseline; a few tokens to stay quick): clean, steered and
    baseline texts show, and the stored runs list names the new experiment."""
    path = db_copy  # the session's file stays as other tests expect it
    server = Server(path)
    try:
        page = open_page(browser, f"{server.url}/steering")
        # the stored runs are drawn last: a click during the first render can stall the session
        settle(page, "Settings and provenance of this run")
        page.get_by_label("New tokens").fill("4")
        page.get_by_role("button", name="Generate").click()
        page.locator(".pg-steered").wait_for(timeout=180_000)
        settle(page, "calibrated")
        clean = page.inner_text(".pg-clean")
        steered = page.inner_text(".pg-steered")
        baseline = page.inner_text(".pg-diffmean")
        assert clean.startswith("clean") and len(clean.split()) > 2, clean
        assert steered.startswith("SAE latent") and len(steered.split()) > 2, steered
        assert baseline.startswith("DiffMean") and len(baseline.split()) > 1, baseline
        main = page.inner_text("[data-testid=stMain]")
        assert "calibrated" in main and "No steering runs" not in main
        # the stored runs are drawn after the texts: on a busy machine the selector can still
        # show the earlier experiment for a moment, so wait for it to name the new one
        from playwright.sync_api import expect

        picker = page.get_by_label("Experiment")
        expect(picker).to_have_value(re.compile(r" · latent .*\(target KL 1\)"), timeout=60_000)
        page.locator(".pg-steered").scroll_into_view_if_needed()
        _shot(page, tmp_path, "steering_generated")
        assert not page.errors, page.errors
    finally:
        server.close(signal.SIGINT)  # Ctrl-C stops the server too


TOUR_DB = os.environ.get("SAELAB_TOUR_DB", "runs/demo/results.duckdb")
TOUR_DIR = Path(__file__).resolve().parents[2] / "docs" / "tour"


@pytest.mark.slow
def test_newcomer_tour_of_the_demo(browser):
    """The README's tour, as a newcomer takes it after `make demo`: every page's first click
    lands on data. Writes the screenshots into docs/tour/ (run it after `make demo`:
    `pytest -m slow -k tour`; SAELAB_TOUR_DB names another results file)."""
    if not Path(TOUR_DB).is_file():
        pytest.skip(f"no demo results at {TOUR_DB}: run `make demo` first")
    TOUR_DIR.mkdir(exist_ok=True)
    server = Server(TOUR_DB)
    try:
        page = open_page(browser, server.url + "/saes")
        page.set_viewport_size({"width": 1400, "height": 1200})
        settle(page, "FVU vs L0")
        assert "Page not found" not in page.inner_text("body")
        _tour_shot(page, "1-saes")
        page.get_by_role("button", name="Browse features").click()
        page.wait_for_url("**/feature?*")
        settle(page, "Top activations")
        main = page.inner_text("[data-testid=stMain]")
        assert "Explanations" in main and "No feature statistics" not in main
        _tour_shot(page, "2-feature")
        page.get_by_placeholder("Type text").fill("The tennis final ended 6-4, 7-6 in Paris.")
        page.get_by_role("button", name="Run on this text").click()
        page.locator(".saelab-test-text").first.wait_for(timeout=120_000)
        page.locator(".saelab-test-text").first.scroll_into_view_if_needed()
        _tour_shot(page, "3-feature-test-text")
        _tour_page(page, "Circuits", "edge correlation", "4-circuits")
        page.get_by_role("link", name="Steering").click()
        settle(page, "Generate")
        page.get_by_role("button", name="Generate").click()
        page.locator(".pg-steered").wait_for(timeout=300_000)
        settle(page, "calibrated")
        steered = page.inner_text(".pg-steered")
        assert steered.startswith("SAE latent") and len(steered.split()) > 2, steered
        page.locator(".pg-clean").scroll_into_view_if_needed()
        _tour_shot(page, "5-steering")
        _tour_page(page, "Compare", "best value", "6-compare")
        _tour_page(page, "Search", "Search features", "7-search")
        assert not page.errors, page.errors
    finally:
        server.close()


def _tour_page(page, link: str, text: str, shot: str) -> None:
    """Open a page from the sidebar, wait for `text`, and take its screenshot."""
    page.get_by_role("link", name=link).click()
    settle(page, text)
    _tour_shot(page, shot)


def _tour_shot(page, name: str) -> None:
    """A screenshot for the README: what the window shows (Streamlit scrolls inside it)."""
    page.wait_for_timeout(500)
    page.screenshot(path=str(TOUR_DIR / f"{name}.png"))
