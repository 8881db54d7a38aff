"""`ddfp mlflow-picture`: the README's MLflow picture, taken from the runs the evaluate stage recorded.

The run ids come from the evaluate stage's run records (`metrics/**/*.run.json`, whatever the layout
under `metrics/`). A real `mlflow server` on the tracking store shows them in its compare view, opened
in Debian's headless Chromium: the run names (`<dataset>-<split>-<method>-seed<seed>`), the params
that differ between the runs (`split`, `train.method` for the demo's split x method runs) and the
metrics table scrolled to `val_miou`. The window is sized so that every run's column and those
sections fit, and one screenshot of them is written atomically.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import requests

from pipeline.errors import DataError, JobError, UsageError
from pipeline.files import write_bytes_atomic

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SERVER_START_S = 90.0  # a cold `mlflow server` answers /health after about 5 s on 2 cores
PAGE_S = 60.0  # the UI's first load compiles a large bundle


@dataclass(frozen=True)
class RecordedRun:
    record: Path  # the run record that names the run
    run_id: str
    split: str
    method: str


def _order(run: RecordedRun) -> tuple[bool, int, str, str]:
    # Splits are label counts: 8 before 16.
    return (not run.split.isdigit(), int(run.split) if run.split.isdigit() else 0, run.split, run.method)


def recorded_runs(metrics: Path) -> list[RecordedRun]:
    """Every run record under `metrics` (any depth), ordered by split then method."""
    runs: dict[str, RecordedRun] = {}
    for path in sorted(Path(metrics).glob("**/*.run.json")):
        try:
            record: dict[str, Any] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: not a readable run record ({err})") from None
        if not record.get("run_id"):
            raise DataError(f"{path}: no run_id (evaluated with tracking.enabled false?)")
        method = record.get("config", {}).get("train.method", "?")
        runs.setdefault(record["run_id"], RecordedRun(path, record["run_id"], str(record.get("split")), method))
    if not runs:
        raise DataError(f"{metrics}: no *.run.json run records (run `dvc repro`, or `ddfp evaluate`, first)")
    return sorted(runs.values(), key=_order)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Any, uri: str) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise DataError(f"{uri}: mlflow server exited: {tail[0]}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise JobError(f"{uri}: mlflow server not answering {url}/health after {SERVER_START_S:.0f} s")


@contextmanager
def mlflow_ui(uri: str) -> Iterator[str]:
    """The base URL of an MLflow UI on the store `uri`: a server's own URL, else a local `mlflow
    server` on a free port of 127.0.0.1, stopped (with its workers, its process group) on exit."""
    if uri.startswith(("http://", "https://")):
        yield uri.rstrip("/")
        return
    url = f"http://127.0.0.1:{_free_port()}"
    # Job execution off: otherwise the server forks 7 job workers (2.4 GB instead of 0.5 GB). Only
    # run pages are shown, so no artifact proxy.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", uri,
           "--no-serve-artifacts", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_healthy(url, proc, log, uri)
            yield url
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def missing_browser() -> str | None:
    """Why no browser can be driven here, or None."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists() and importlib.util.find_spec("selenium"):
        return None
    return "needs Debian's chromium and chromium-driver (`make test` installs them, as root) and selenium"


def chromium(width: int = 1400, height: int = 1000):
    """Debian's headless Chromium through Debian's chromedriver (never a downloaded browser)."""
    missing = missing_browser()
    if missing:
        raise UsageError(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def wait_for_text(driver, needles: list[str], timeout_s: float = PAGE_S) -> str:
    """The page's text once it holds every needle, or at the deadline (the caller checks)."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = driver.find_element("tag name", "body").text
        if all(n in body for n in needles) or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def run_views(url: str, runs: list[RecordedRun]) -> tuple[list[str], list[str]]:
    """The runs' names and their experiments' ids, as the server knows them."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    names, experiments = [], []
    for run in runs:
        try:
            info = client.get_run(run.run_id).info
        except MlflowException:
            raise DataError(f"{run.record}: run {run.run_id} is not in the tracking store") from None
        names.append(info.run_name)
        experiments.append(info.experiment_id)
    return names, sorted(set(experiments))


# The metrics section's two grids (names, values), found from the section's own toggle: the
# parameters and tags sections may hold grids too.
METRIC_GRIDS = """
let node = document.querySelector("button[aria-label='Metrics - Show diff only']");
while (node && node.querySelectorAll('.ReactVirtualized__Grid').length < 2) node = node.parentElement;
const grids = node ? [...node.querySelectorAll('.ReactVirtualized__Grid')].slice(0, 2) : [];
"""


def scroll_metrics_to_val_miou(driver) -> tuple[str, str]:
    """Metric names and values with the metrics table scrolled to its end, where val_miou* sort.
    The table is virtualised (rows outside its viewport are not in the page) and names and values
    are two grids scrolled in sync, so both go to the end, until the rows are drawn."""
    for _ in range(40):
        shown = driver.execute_script(METRIC_GRIDS + "grids.forEach(g => { g.scrollTop = g.scrollHeight; });"
                                                     "return grids.map(g => g.innerText);")
        if len(shown) == 2 and "val_miou" in shown[0].split("\n"):
            return shown[0], shown[1]
        time.sleep(0.5)
    raise JobError(f"{driver.current_url}: the MLflow compare view shows no val_miou metric")


def show_differing_params(driver) -> None:
    """Only the params that differ between the runs (split, train.method, ...): a few rows instead of
    the whole configuration. Also closes the assistant panel that covers the right-hand columns."""
    for close in driver.find_elements("css selector", "button[aria-label='Close']")[:1]:
        close.click()
    toggle = driver.find_element("css selector", "button[aria-label='Parameters - Show diff only']")
    if toggle.get_attribute("aria-checked") != "true":
        toggle.click()


# The compare tables share the window's width between a names column and one column per run; a
# run id (32 characters) needs about this much to show whole.
SIDEBAR_AND_NAMES_PX, RUN_COLUMN_PX = 480, 300
# Back to the left edge: a sideways-scrolled table hides the start of the first run's column.
UNSCROLL = """document.querySelectorAll('*').forEach(e => {
  if (['auto', 'scroll'].includes(getComputedStyle(e).overflowX)) e.scrollLeft = 0; });"""


def fit_width(driver, n_runs: int) -> None:
    """A window wide enough for every run's column."""
    width = max(1400, SIDEBAR_AND_NAMES_PX + RUN_COLUMN_PX * n_runs)
    driver.set_window_size(width, driver.get_window_size()["height"])
    time.sleep(0.5)


def fit_height(driver, first, last) -> None:
    """Make the viewport span from `first`'s top to `last`'s bottom, and scroll `first` to the top."""
    top, bottom, chrome = driver.execute_script(
        "return [arguments[0].getBoundingClientRect().top, arguments[1].getBoundingClientRect().bottom,"
        " window.outerHeight - window.innerHeight];", first, last)
    driver.set_window_size(driver.get_window_size()["width"], int(bottom - top + chrome + 60))
    driver.execute_script("arguments[0].scrollIntoView()", first)
    time.sleep(1)


def shoot(driver, url: str, runs: list[RecordedRun], out: Path) -> str:
    """One screenshot of the compare view of `runs` to `out`; returns the page's text at that moment."""
    names, experiments = run_views(url, runs)
    query = {"runs": [r.run_id for r in runs], "experiments": experiments}
    driver.get(f"{url}/#/compare-runs?" + "&".join(f"{k}={json.dumps(v, separators=(',', ':'))}"
                                                    for k, v in query.items()))
    body = wait_for_text(driver, ["Run details", "val_miou", *names])
    if not all(name in body for name in names):
        raise JobError(f"{url}: the MLflow compare view did not show the runs {names}")
    show_differing_params(driver)
    fit_width(driver, len(runs))
    scroll_metrics_to_val_miou(driver)
    section = driver.find_element("xpath", "//*[normalize-space(text())='Run details']")
    grids = driver.execute_script(METRIC_GRIDS + "return grids;")
    fit_height(driver, section, grids[-1])
    driver.execute_script(UNSCROLL)
    write_bytes_atomic(out, driver.get_screenshot_as_png())
    return driver.find_element("tag name", "body").text


def take_picture(metrics: Path, uri: str, out: Path) -> str:
    """The README's picture of the runs recorded under `metrics`, from the store `uri`, to `out`.
    Returns the page's text at the moment of the screenshot (what a reader of the picture sees)."""
    runs = recorded_runs(metrics)
    with mlflow_ui(uri) as url:
        driver = chromium()
        try:
            return shoot(driver, url, runs, Path(out))
        finally:
            driver.quit()
