"""The MLflow UI in a real browser: a campaign mirrored into a real ``mlflow server``, its runs
comparison page and its experiment page opened in headless Chromium, checked and screenshotted.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on fds 3 and 4), with the standard library only: the UI is a React
app that fetches its data after load, so the test waits for what it checks to be rendered rather
than for a fixed time, and sets the UI's own local-storage preferences (no assistant side panel,
the "Model training" view, metric and param columns) before the app starts.

Skipped without Chromium (``/usr/bin/chromium``, or ``HYBRID_CHROMIUM``) unless
``HYBRID_REQUIRE_BROWSER=1``, which turns the skip into a failure. The lane that runs it with
Chromium installed: ``.ci/mlflow-ui/run.sh``. Screenshots go to ``HYBRID_UI_SCREENSHOT`` (the
comparison page) and ``HYBRID_UI_SCREENSHOT_RUNS`` (the experiment page), else to a temp dir.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import select
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat

from tests.mlflow_server import MLflowServer, metrics, module_server, params, parent_and_children

pytestmark = pytest.mark.browser

NAME = "example-sobol"
N_EXPERIMENTS = 5
ARGS = ["proposer=sobol", f"budget.max_experiments={N_EXPERIMENTS}", "backend.workers=2"]
WINDOW = (1600, 1000)
RENDER_TIMEOUT_S = 90.0  # the app's bundles load and its REST calls answer on a busy 2-core box too
# The documented Chromium flags for this machine's closed network (/work/.library/env/machines).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
]


def ui_preferences(experiment_id: str) -> dict[str, str]:
    """localStorage entries the UI reads at start (keys as MLflow 3.x stores them)."""
    page_state = {"selectedColumns": ["metrics.`val_bpb`", "metrics.`best_val_bpb`", "params.`lr`", "params.`depth`",
                                      "params.`window_pattern`", "tags.`source`", "tags.`hardware`"]}
    return {
        # the assistant side panel opens by itself on a first visit and covers a quarter of the page
        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
        "mlflow.assistant.panelOpen_v1": "false",
        "mlflow.workflowType_v1": json.dumps("machine_learning"),  # "Model training", not "GenAI"
        f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState': json.dumps(page_state),
    }


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe: one page per ``open``."""

    def __init__(self, exe: str, workdir: Path) -> None:
        profile = workdir / "chromium-profile"  # a new, empty profile
        profile.mkdir(parents=True)
        self.log = workdir / "chromium.log"
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        args = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                "--remote-debugging-pipe", "about:blank"]
        # The protocol is on fds 3 (commands in) and 4 (answers out) of the browser process: bash
        # moves our pipe ends there (POSIX sh need not take fd numbers above 9, dash does not).
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', exe, *args],
                pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0,
             session: bool = True) -> dict[str, Any]:
        """One command and its answer (events that arrive meanwhile are dropped)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._id:
                    if "error" in answer:
                        raise RuntimeError(f"Chromium {method}: {answer['error']}")
                    return answer.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout:.0f} s; log: {self.log}")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium exited ({self.proc.poll()}); log:\n{self.log_text()}")
                self._buf += chunk

    def open(self, url: str, local_storage: dict[str, str]) -> None:
        """A new page of WINDOW's size on ``url``, with ``local_storage`` set before any script runs."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
        seed = "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in local_storage.items())
        self.send("Page.addScriptToEvaluateOnNewDocument", {"source": f"try {{ {seed} }} catch (e) {{}}"})
        self.send("Page.navigate", {"url": url})

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = RENDER_TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.25)
        text = self.eval("document.body ? document.body.innerText : ''") or ""
        raise AssertionError(f"the page never showed {what} in {timeout:.0f} s; its text:\n{text[:3000]}")

    def text(self) -> str:
        return self.eval("document.body.innerText")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", session=False, timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        os.close(self._w)
        os.close(self._r)


@pytest.fixture(scope="module")
def chromium_exe() -> str:
    exe = os.environ.get("HYBRID_CHROMIUM") or "/usr/bin/chromium"
    if not os.access(exe, os.X_OK):
        message = f"no Chromium at {exe}; install it (apt-get install chromium) or run .ci/mlflow-ui/run.sh"
        if os.environ.get("HYBRID_REQUIRE_BROWSER") == "1":
            pytest.fail(f"HYBRID_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)
    return exe


@pytest.fixture(scope="module")
def server(
    chromium_exe: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MLflowServer]:
    yield from module_server(request, tmp_path_factory)  # after chromium_exe: no browser, no server


@pytest.fixture(scope="module")
def campaign(server: MLflowServer) -> dict[str, Any]:
    """The mirrored campaign, as the REST API has it: experiment, parent run, child runs."""
    server.run_campaign(NAME, ARGS)
    experiment = server.experiment(NAME)
    parents, children = parent_and_children(server.search_runs(experiment["experiment_id"]))
    assert len(parents) == 1 and len(children) == N_EXPERIMENTS
    return {"experiment": experiment, "parent": parents[0], "children": children}


@pytest.fixture
def browser(chromium_exe: str, tmp_path: Path) -> Iterator[Chromium]:
    b = Chromium(chromium_exe, tmp_path)
    try:
        yield b
    finally:
        b.close()


def screenshot_path(env: str, tmp_path: Path, default: str) -> Path:
    return Path(os.environ[env]).resolve() if os.environ.get(env) else tmp_path / default


def assert_not_blank(png: Path) -> None:
    """A real PNG of the window's size with content: not a white page, not a lone spinner."""
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == WINDOW, (img.format, img.size)
        gray = img.convert("L")
        spread = ImageStat.Stat(gray).stddev[0]
        colors = len(img.convert("RGB").getcolors(maxcolors=1 << 20) or [])
    assert spread > 10 and colors > 200, f"{png} looks blank: stddev {spread:.1f}, {colors} colors"


def test_the_compare_runs_page_renders_every_child_run(
    server: MLflowServer, campaign: dict[str, Any], browser: Chromium, tmp_path: Path
) -> None:
    exp_id = campaign["experiment"]["experiment_id"]
    children = campaign["children"]
    ids = [c["info"]["run_id"] for c in children]
    names = [c["info"]["run_name"] for c in children]
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp_id])})
    browser.open(f"{server.url}/#/compare-runs?{query}", ui_preferences(exp_id))
    # every child run's name in the run table, and the parallel coordinates plot drawn
    browser.wait_for(
        f"(() => {{ const t = document.body ? document.body.innerText : '';"
        f" return {json.dumps(names)}.every(n => t.includes(n))"
        f" && !!document.querySelector('.js-plotly-plot .main-svg'); }})()",
        f"the child runs {names} and a plot",
    )
    time.sleep(1.0)  # let the plot's transition finish before the screenshot
    text = browser.text()
    html = browser.eval("document.documentElement.outerHTML")
    for run_id in ids:
        assert run_id in html, f"child run {run_id} is not on the page"
    # the params and metrics tables: every child's values (params as logged, metrics to 3 decimals)
    lines = text.splitlines()
    for child in children:
        name = child["info"]["run_name"]
        for key, value in params(child).items():
            assert any(ln.split("\t")[0] == key and value in ln.split("\t")[1:] for ln in lines), (
                f"param {key}={value} of {name} is not on the page")
        x = metrics(child)["val_bpb"]
        shown = {f"{math.floor(x * 1000) / 1000:g}", f"{math.ceil(x * 1000) / 1000:g}"}  # either rounding
        assert shown & set(lines), f"val_bpb {x} of {name} is not on the page (as one of {sorted(shown)})"
    assert campaign["parent"]["info"]["run_id"] not in html  # only the runs that were asked for
    png = browser.screenshot(screenshot_path("HYBRID_UI_SCREENSHOT", tmp_path, "mlflow-ui-compare.png"))
    assert_not_blank(png)
    print(f"screenshot: {png}")


def test_the_experiment_page_nests_child_runs_under_the_campaign_run(
    server: MLflowServer, campaign: dict[str, Any], browser: Chromium, tmp_path: Path
) -> None:
    exp_id = campaign["experiment"]["experiment_id"]
    parent_id = campaign["parent"]["info"]["run_id"]
    names = [c["info"]["run_name"] for c in campaign["children"]]
    browser.open(f"{server.url}/#/experiments/{exp_id}/runs", ui_preferences(exp_id))
    # the run table's rows (ag-grid: run ids in row-id, the displayed order in row-index)
    row_ids = ("[...document.querySelectorAll('.ag-center-cols-container .ag-row[row-id]')]"
               ".sort((a, b) => +a.getAttribute('row-index') - +b.getAttribute('row-index'))"
               ".map(r => r.getAttribute('row-id'))")
    # collapsed: only the campaign's run is a row, its children are behind its expander
    browser.wait_for(f"{row_ids}.includes({json.dumps(parent_id)})", f"the campaign run {NAME}")
    time.sleep(0.5)
    assert browser.eval(row_ids) == [parent_id], "child runs are not nested under the campaign run"
    assert not any(n in browser.text() for n in names)
    assert browser.eval(
        f"(() => {{ const b = document.querySelector('[row-id={json.dumps(parent_id)}] button');"
        f" if (!b) return false; b.click(); return true; }})()"
    ), "the campaign run has no expander"
    shown = browser.wait_for(
        f"(() => {{ const ids = {row_ids}; return ids.length === {N_EXPERIMENTS + 1} && ids; }})()",
        "the expanded child runs",
    )
    assert shown[0] == parent_id  # the children right under their parent
    assert sorted(shown[1:]) == sorted(c["info"]["run_id"] for c in campaign["children"])
    browser.wait_for(f"{json.dumps(names)}.every(n => document.body.innerText.includes(n))", f"the names {names}")
    time.sleep(0.5)
    png = browser.screenshot(screenshot_path("HYBRID_UI_SCREENSHOT_RUNS", tmp_path, "mlflow-ui-runs.png"))
    assert_not_blank(png)
    print(f"screenshot: {png}")
