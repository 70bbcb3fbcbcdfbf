"""The MLflow UI as a user sees it, in a real browser (headless Chromium driven by Selenium).

A tiny grid is built, reported, classified and tuned with the README's commands (their
``main()``, in the test process); ``mlflow server`` serves its store on a free loopback port;
the browser then opens the experiment's runs table, the grid run's artifacts and the Model
registry, and checks that what a user compares is on screen: the cell runs by name with their
regime tags and metrics, nested under the grid run; the study's trials under the study run;
the phase diagram and regime map as images on the grid run; the registered classifier with its
alias and descriptions.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the
``selenium`` package (dev extra); without them the tests skip and say why. Screenshots are
written to the test's temporary folder; with ``THREE_REGIME_UI_SCREENSHOTS=docs`` they are
also copied there (that is how ``docs/mlflow_ui*.png`` are made).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO, TINY, MlflowServer, cli_env, free_port, wait_for, write_config
from mlflow import MlflowClient

from tracking import keys

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS_ENV = "THREE_REGIME_UI_SCREENSHOTS"
WAIT = 60            # seconds for a page element: the React app fetches after it loads

# The store photographed: the tiny grid below, or with THREE_REGIME_UI_CONFIG=<config> the
# grid of that config (how the README's screenshots of the demo grid are made:
# THREE_REGIME_UI_CONFIG=configs/demo.yaml THREE_REGIME_UI_SCREENSHOTS=docs pytest this file).
CONFIG_ENV = "THREE_REGIME_UI_CONFIG"
TINY_DESCRIPTION = "Tiny grid for the MLflow UI test: epochs x density on MNIST-1D."
# 2 temperatures x 2 densities x 2 dense seeds of the shared tiny grid
TINY_CONFIG = {**TINY, "experiment": "ui-tiny", "description": TINY_DESCRIPTION,
               "dense_seeds": [0, 1]}
TUNE_TRIALS = 2


def _scenario() -> tuple[dict, bool]:
    """The grid's config and whether it is the tiny one."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return TINY_CONFIG, True
    path = Path(path) if Path(path).is_absolute() else REPO / path
    return yaml.safe_load(path.read_text()), False


CONFIG, IS_TINY = _scenario()
EXPERIMENT = CONFIG["experiment"]
DESCRIPTION = " ".join(CONFIG.get("description", "").split())
N_CELLS = (len(CONFIG["temperatures"]) * len(CONFIG["densities"])
           * len(CONFIG.get("dense_seeds", [0])))
TUNE_DENSITY = 0.2 if IS_TINY else CONFIG["densities"][0]


def _browser_or_skip() -> None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} not found: install Debian's {package} package "
                        "(apt-get install -y chromium chromium-driver; .ci/run does)")
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")


def _run(args: list[str], env: dict) -> str:
    """``python -m <args>`` under the environment ``env``, through the package's ``main()`` in
    this process (the same command without a fresh interpreter, seconds each); its output."""
    main = importlib.import_module(f"{args[0]}.__main__").main
    saved = dict(os.environ)
    out = io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = main(args[1:])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert status == 0, f"python -m {' '.join(args)} exited {status}:\n{out.getvalue()}"
    return out.getvalue()


def _split(values: pd.Series) -> float:
    """A threshold between the two middle distinct values (below them all if only one)."""
    distinct = sorted(set(values.round(9)))
    if len(distinct) < 2:
        return distinct[0] - 1e-6
    middle = len(distinct) // 2
    return (distinct[middle - 1] + distinct[middle]) / 2


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """The tiny grid, its report, regime labels and a short tuning study, in a fresh store."""
    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = cli_env(uri, root / "mlruns")
    config = write_config(root / "grid.yaml", CONFIG)
    _run(["pipeline", "grid", str(config), "--no-progress"], env)
    # the server starts up (another process, on the other core) while the store is completed
    server = MlflowServer(uri, root / "served-artifacts", root / "server.log")
    server.start(wait=False)
    try:
        _run(["tracking", "report", "--experiment", EXPERIMENT, "--out", str(root / "report")],
             env)
        thresholds = []
        if IS_TINY:
            # thresholds inside the measured range, so that the tiny grid has more than one
            # regime (a real grid is labelled as the README says: no thresholds)
            table = pd.read_csv(root / "report" / keys.ARTIFACT_RESULTS_CSV)
            eps = _split(table[keys.LMC_BARRIER])
            tau = _split(table.loc[table[keys.LMC_BARRIER] >= eps, keys.CKA])
            thresholds = ["--eps", repr(eps), "--tau", repr(tau)]
        _run(["selection", "classify", "--experiment", EXPERIMENT, *thresholds], env)
        _run(["selection", "tune", "--config", str(config), "--density", str(TUNE_DENSITY),
              "--n-trials", str(TUNE_TRIALS), "--storage", str(root / "optuna.journal")], env)

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        by_kind: dict[str, list] = {}
        for run in runs:
            by_kind.setdefault(run.data.tags.get(keys.RUN_KIND), []).append(run)
        server.wait()
        yield {"root": root, "uri": uri, "client": client, "server": server.uri,
               "experiment_id": experiment.experiment_id, "runs": by_kind}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; asked for before ``store``, so that without it a test skips at once
    (before the store is built)."""
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1700,1150"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --- page helpers ------------------------------------------------------------------------

def _wait(driver, xpath: str, what: str, timeout: float = WAIT, clickable: bool = False):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    condition = (ec.element_to_be_clickable if clickable else ec.visibility_of_element_located)
    try:
        return WebDriverWait(driver, timeout).until(condition((By.XPATH, xpath)))
    except TimeoutException:
        shot = Path(tempfile.gettempdir()) / "ui_test_failure.png"
        driver.save_screenshot(str(shot))
        body = driver.find_element(By.TAG_NAME, "body").text[:3000]
        pytest.fail(f"the UI did not show {what} within {timeout:.0f} s at {driver.current_url} "
                    f"(screenshot {shot}); page text:\n{body}")


def _text(value: str) -> str:
    """An XPath string literal of ``value`` (run names contain quotes only in theory)."""
    return f"'{value}'" if "'" not in value else f'"{value}"'


def _close_assistant(driver) -> None:
    """Close MLflow 3's assistant side panel, which covers part of the table (if it is open)."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        if button.is_displayed():
            button.click()
            return


def _runs_url(store: dict) -> str:
    # MLflow 3 opens an experiment in its GenAI view; this parameter opens the runs table
    return (f"{store['server']}/#/experiments/{store['experiment_id']}/runs"
            "?workflowType=machine_learning")


def _expand(driver, run_name: str) -> None:
    """Click the expander of the parent run ``run_name`` in the runs table."""
    cell = f"//div[@role='gridcell'][.//a[normalize-space()={_text(run_name)}]]"
    _wait(driver, cell + "//button", f"the expander of {run_name!r}", clickable=True).click()


def _choose_columns(driver, show: list[str], hide: list[str] = ()) -> None:
    """Tick ``show`` and untick ``hide`` (metric, param, tag or attribute names) in the runs
    table's column selector."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _wait(driver, "//button[normalize-space()='Columns']", "the Columns button",
          clickable=True).click()
    box = _wait(driver, "//input[@placeholder='Search columns']", "the column search box")
    wanted = {**{name: True for name in show}, **{name: False for name in hide}}
    for name, ticked in wanted.items():
        box.send_keys(Keys.CONTROL, "a", Keys.DELETE)
        box.send_keys(name)
        deadline = time.time() + WAIT
        # search matches substrings (test_acc_std, regime_eps, ...): take the exact node
        while True:
            nodes = [n for n in driver.find_elements(
                By.XPATH, "//div[contains(@class,'tree-treenode')]") if n.text.strip() == name]
            if nodes or time.time() > deadline:
                break
            time.sleep(0.2)
        assert nodes, f"column selector offers no column {name!r}"
        checkbox = nodes[-1].find_element(By.XPATH, ".//span[contains(@class,'tree-checkbox')]")
        if ("checkbox-checked" in (checkbox.get_attribute("class") or "")) != ticked:
            checkbox.click()
    box.send_keys(Keys.ESCAPE)


def _widen_run_names(driver, pixels: int = 160) -> None:
    """Drag the Run Name column wider so that cell names are not cut (cosmetic: for the
    screenshot; the assertions read the full names from the page)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    try:
        handle = driver.find_element(
            By.XPATH, "//div[@role='columnheader'][contains(@col-id,'Run Name')]"
                      "//div[contains(@class,'ag-header-cell-resize')]")
        ActionChains(driver).drag_and_drop_by_offset(handle, pixels, 0).perform()
    except WebDriverException:
        pass   # another layout of the table: the names are only shorter on the picture


def _mouse_away(driver) -> None:
    """Move the pointer to the page's top-left corner, so no tooltip covers the screenshot."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    body = driver.find_element(By.TAG_NAME, "body")
    size = body.size   # offsets are from the element's centre
    ActionChains(driver).move_to_element_with_offset(
        body, 2 - size["width"] // 2, 2 - size["height"] // 2).perform()


def _row_cells(driver, run_id: str) -> dict[str, str]:
    """Text of each column of the runs-table row of ``run_id``, keyed by the column's id
    (e.g. ``metrics.`test_acc```); pinned and scrolling parts of the row are merged."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.XPATH, f"//div[@role='row'][@row-id='{run_id}']"
                                           "//div[@role='gridcell'][@col-id]")
    return {c.get_attribute("col-id"): c.text.strip() for c in cells}


def _column(cells: dict[str, str], group: str, key: str) -> str:
    for col_id, text in cells.items():
        if col_id.startswith(f"{group}.") and col_id[len(group) + 1:].strip("`") == key:
            return text
    raise AssertionError(f"no {group} column {key!r} in the row; columns: {sorted(cells)}")


def _same_number(shown: str, value: float) -> bool:
    try:
        return math.isclose(float(shown), value, rel_tol=1e-6, abs_tol=1e-9)
    except ValueError:
        return False


def _screenshot(driver, store: dict, name: str) -> Path:
    path = store["root"] / name
    driver.save_screenshot(str(path))
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        target = Path(folder) if Path(folder).is_absolute() else REPO / folder
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / name)
    return path


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


# --- the tests ---------------------------------------------------------------------------

def test_store_is_shaped_for_the_ui(store):
    """What the pages below rely on, read through the API: one grid run with every cell
    nested under it (the tuner adds none of its own), regime tags, a study with its trials."""
    runs = store["runs"]
    (grid,) = runs[keys.KIND_GRID]
    cells = runs[keys.KIND_CELL]
    assert len(cells) == N_CELLS
    assert {c.data.tags[keys.PARENT_RUN_ID] for c in cells} == {grid.info.run_id}
    assert {c.data.tags.get(keys.REGIME) for c in cells} <= {"I", "II-A", "II-B"}
    assert all(c.data.tags.get(keys.REGIME) for c in cells)
    (study,) = runs[keys.KIND_STUDY]
    trials = runs[keys.KIND_TRIAL]
    assert len(trials) == TUNE_TRIALS
    assert {t.data.tags[keys.PARENT_RUN_ID] for t in trials} == {study.info.run_id}
    experiment = store["client"].get_experiment(store["experiment_id"])
    assert experiment.tags.get(keys.NOTE) == DESCRIPTION


def test_runs_table_shows_cells_regimes_and_metrics(browser, store):
    """The runs table: the experiment's description, the grid run and the study run with
    their nested runs, and per cell its name, regime tag, test_acc, lmc_barrier and cka."""
    browser.get(_runs_url(store))
    (grid,) = store["runs"][keys.KIND_GRID]
    (study,) = store["runs"][keys.KIND_STUDY]
    _wait(browser, f"//*[normalize-space()={_text(DESCRIPTION)}]", "the experiment description")
    _wait(browser, f"//a[normalize-space()={_text(grid.info.run_name)}]", "the grid run")
    _close_assistant(browser)
    _expand(browser, grid.info.run_name)
    _expand(browser, study.info.run_name)
    metrics = [keys.TEST_ACC, keys.LMC_BARRIER, keys.CKA]
    _choose_columns(browser, [*metrics, keys.REGIME], hide=["Dataset", "Source"])

    cells = store["runs"][keys.KIND_CELL]
    for run in cells:
        _wait(browser, f"//a[normalize-space()={_text(run.info.run_name)}]",
              f"cell run {run.info.run_name!r} under the grid run")
    for run in store["runs"][keys.KIND_TRIAL]:
        _wait(browser, f"//a[normalize-space()={_text(run.info.run_name)}]",
              f"trial run {run.info.run_name!r} under the study run")
    time.sleep(1)   # let the freshly added columns render in every row
    for run in cells:
        row = _row_cells(browser, run.info.run_id)
        name = run.info.run_name
        assert _column(row, "tags", keys.REGIME) == run.data.tags[keys.REGIME], name
        for metric in metrics:
            shown = _column(row, "metrics", metric)
            assert _same_number(shown, run.data.metrics[metric]), (name, metric, shown)
    _widen_run_names(browser)
    _mouse_away(browser)
    _screenshot(browser, store, "mlflow_ui.png")


def test_grid_run_shows_phase_diagram_and_regime_map(browser, store):
    """The grid run's artifacts: plots/ lists the phase diagrams and the regime map, and the
    phase diagram is rendered as an image of the logged PNG's size."""
    (grid,) = store["runs"][keys.KIND_GRID]
    browser.get(f"{store['server']}/#/experiments/{store['experiment_id']}/runs/"
                f"{grid.info.run_id}/artifacts?workflowType=machine_learning")
    _wait(browser, f"//*[normalize-space(text())={_text(keys.ARTIFACT_PLOTS_DIR)}]",
          "the plots/ folder", clickable=True).click()
    _wait(browser, f"//*[normalize-space(text())={_text(keys.PLOT_REGIME_MAP)}]",
          "the regime map in plots/")
    _wait(browser, f"//*[normalize-space(text())={_text(keys.PLOT_PHASE_DIAGRAMS)}]",
          "the phase diagrams in plots/", clickable=True).click()
    _close_assistant(browser)
    expected = _png_size(store["root"] / "report" / keys.PLOT_PHASE_DIAGRAMS)
    from selenium.webdriver.support.ui import WebDriverWait

    def rendered(driver):
        return driver.execute_script(
            "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0)"
            ".map(i => [i.naturalWidth, i.naturalHeight]);")

    try:
        WebDriverWait(browser, WAIT).until(lambda d: list(expected) in rendered(d))
    except Exception:  # noqa: BLE001 - report what was rendered instead
        pytest.fail(f"no rendered image of {expected} px (the phase diagram PNG); images on "
                    f"the page: {rendered(browser)}")
    _mouse_away(browser)
    _screenshot(browser, store, "mlflow_ui_phase_diagrams.png")


def test_registry_shows_classifier_alias_and_descriptions(browser, store):
    """The Model registry page of the classifier: its description, and the version that
    carries the ``champion`` alias with its own description."""
    client = store["client"]
    name = f"{EXPERIMENT}-regime-classifier"
    model = client.get_registered_model(name)
    assert model.description and "Regime classifier" in model.description
    version = client.get_model_version_by_alias(name, "champion")
    fitted = f"Fitted on {N_CELLS} labelled cells"
    assert version.description and fitted in version.description
    browser.get(f"{store['server']}/#/models/{name}/versions/{version.version}")
    _wait(browser, "//*[contains(normalize-space(), 'champion')]", "the champion alias")
    _wait(browser, f"//*[contains(normalize-space(text()), '{fitted}')]",
          "the version description")
    browser.get(f"{store['server']}/#/models/{name}")
    _wait(browser, "//*[contains(normalize-space(text()), 'Regime classifier (I / II-A / II-B)')]",
          "the registered model description")


def _get(server: str, path: str, **query) -> dict:
    """GET a REST endpoint of the MLflow server; the JSON answer."""
    url = f"{server}{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_readme_mlflow_ui_command_serves_the_grid(store):
    """The README's ``.venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000``,
    run in the folder of the store (a free port, loopback): its REST API serves the grid
    experiment, every cell run with its regime, density and temperature, and the grid run's
    best-temperature table; SIGTERM to its process group stops every process in it."""
    port = free_port()
    log = store["root"] / "mlflow-ui.log"
    env = cli_env(None, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with open(log, "w") as out:
        ui = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
             "sqlite:///mlflow.db", "--host", "127.0.0.1", "--port", str(port)],
            cwd=store["root"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    server = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"{server}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(answers, 120, interval=0.5, what=f"mlflow ui on {server}", proc=ui, log=log)
        experiment = _get(server, "/api/2.0/mlflow/experiments/get-by-name",
                          experiment_name=EXPERIMENT)["experiment"]
        assert experiment["experiment_id"] == store["experiment_id"]
        request = urllib.request.Request(
            f"{server}/api/2.0/mlflow/runs/search", method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [experiment["experiment_id"]], "max_results": 1000,
                             "filter": f"tags.{keys.RUN_KIND} = '{keys.KIND_CELL}'"}).encode())
        with urllib.request.urlopen(request, timeout=10) as answer:
            served = json.loads(answer.read())["runs"]
        expected = {r.info.run_id: r for r in store["runs"][keys.KIND_CELL]}
        assert {r["info"]["run_id"] for r in served} == set(expected)
        (grid,) = store["runs"][keys.KIND_GRID]
        for run in served:
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            known = expected[run["info"]["run_id"]].data
            assert run["info"]["status"] == "FINISHED"
            assert tags[keys.REGIME] == known.tags[keys.REGIME] in ("I", "II-A", "II-B")
            assert tags[keys.PARENT_RUN_ID] == grid.info.run_id
            for key in (keys.DENSITY, keys.TEMPERATURE):
                assert float(tags[key]) == float(params[key]) == float(known.params[key])
        files = _get(server, "/api/2.0/mlflow/artifacts/list", run_id=grid.info.run_id)["files"]
        assert keys.ARTIFACT_BEST_TEMPERATURES in {f["path"] for f in files}
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(timeout=30)
            pytest.fail(f"mlflow ui ignored SIGTERM for 30 s: {log.read_text()[-2000:]}")
    deadline = time.time() + 30
    while time.time() < deadline:   # its worker processes leave after the parent
        try:
            os.killpg(ui.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(ui.pid, signal.SIGKILL)
        pytest.fail("processes of mlflow ui's group were still alive 30 s after SIGTERM")
