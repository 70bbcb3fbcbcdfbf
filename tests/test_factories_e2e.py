"""End to end with a model and data of one's own (slow): the README's two files through grid ->
classify -> tune -> the registered model loads elsewhere and predicts; Dask workers import
the factories; a module torch.export cannot trace is registered with its code; the Python
entry runs a grid from callables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch import nn

from pipeline import factories
from pipeline.__main__ import main as pipeline_main
from selection.__main__ import main as selection_main
from tracking import keys
from tracking.artifacts import load_file
from tracking.tables import RUN_ID, results_table

REPO = Path(__file__).resolve().parent.parent


def _readme_files() -> tuple[str, dict]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    parts = section.split("```")
    blocks = {}
    for i in range(1, len(parts), 2):
        lang, _, body = parts[i].partition("\n")
        blocks.setdefault(lang.strip(), textwrap.dedent(body))
    return blocks["python"], yaml.safe_load(blocks["yaml"])


def _small(raw: dict, **changes) -> dict:
    """The README's grid cut to a 2 x 2 grid of tiny runs."""
    raw = json.loads(json.dumps(raw))
    raw.update(temperatures=[2, 5], densities=[0.2, 0.5], runtime={"threads": 1}, **changes)
    raw["data"]["kwargs"]["n"] = 240
    raw["dense"].update(epochs=5)
    raw["finetune"].update(epochs=1, seeds=[0, 1], last_epochs=1)
    raw["measure"] = {"lmc_points": 3, "cka_examples": 100}
    return raw


def _run(code: str, cwd: Path, env: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=clean, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_readme_example_through_grid_classify_tune_and_the_registered_model(
        tracking_uri, tmp_path, monkeypatch, capsys):
    code, raw = _readme_files()
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "mynet.py").write_text(code)                      # the README's file, verbatim
    config = project / "my_grid.yaml"
    config.write_text(yaml.safe_dump(_small(raw, experiment=f"own-{uuid.uuid4().hex[:6]}")))
    monkeypatch.chdir(elsewhere)                   # imported from the config's folder, not cwd
    experiment = yaml.safe_load(config.read_text())["experiment"]

    assert pipeline_main(["grid", str(config), "--no-progress"]) == 0
    assert "4 computed" in capsys.readouterr().out
    assert pipeline_main(["grid", str(config), "--no-progress"]) == 0        # a pure lookup
    assert "0 computed, 4 cached" in capsys.readouterr().out
    table = results_table(experiment)
    assert len(table) == 4 and table[keys.TEST_ACC].notna().all()
    params = MlflowClient().get_run(table[RUN_ID].iloc[0]).data.params
    assert params[keys.MODEL] == "mynet:make_net" and params[keys.DATASET] == "mynet:make_data"

    assert selection_main(["classify", "--experiment", experiment]) == 0
    assert results_table(experiment)[keys.REGIME].notna().all()
    capsys.readouterr()

    storage = str(tmp_path / "optuna.journal")
    assert selection_main(["tune", "--config", str(config), "--density", "0.2", "--n-trials", "2",
                           "--storage", storage, "--study", "own"]) == 0
    out = capsys.readouterr().out
    assert "models:/own-pruned@champion" in out, out

    # the registered model is the user's plain module with the best copy's pruned weights
    client = MlflowClient()
    version = client.get_model_version_by_alias("own-pruned", "champion")
    cell_run = version.run_id
    run = client.get_run(cell_run)
    seeds = [0, 1]
    val = {s: run.data.metrics[keys.member_metric(keys.VAL_ACC, s)] for s in seeds}
    best_seed = max(val, key=val.get)
    state = load_file(client, cell_run, f"{keys.ARTIFACT_FINETUNED_DIR}/seed_{best_seed}.pt")
    mask = load_file(client, cell_run, keys.ARTIFACT_MASK)
    # loads where mynet is not importable (MLflow's pt2 format is a graph: no user code)
    folder = str(project.resolve())
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != folder]
    sys.modules.pop("mynet", None)
    import importlib.util

    assert importlib.util.find_spec("mynet") is None
    model = mlflow.pytorch.load_model("models:/own-pruned@champion")
    assert "mynet" not in sys.modules

    sys.path.insert(0, folder)
    try:
        import mynet

        plain = mynet.make_net(hidden=64, num_classes=4)
        data = mynet.make_data(n=240)
    finally:
        sys.path.remove(folder)
        sys.modules.pop("mynet", None)
    plain.load_state_dict(state)
    plain.eval()
    x, y = data["test"][0][:50], data["test"][1][:50]
    with torch.no_grad():
        expected, got = plain(x), model(x)
    assert got.shape == (50, 4) and torch.allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == y).float().mean() > 0.25                    # better than chance
    loaded = model.state_dict()
    for name, m in mask.items():
        assert torch.all(loaded[name][m == 0] == 0), name                 # the pruned zeros


UNTRACEABLE = '''
import torch
from torch import nn


class Gate(nn.Module):
    """Data-dependent Python control flow: torch.export cannot trace it."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.a = nn.Linear(8, num_classes)
        self.b = nn.Linear(8, num_classes)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)
'''


@pytest.mark.slow
def test_a_module_torch_export_cannot_trace_is_registered_with_its_code(tracking_uri, tmp_path):
    name = f"gate_{uuid.uuid4().hex[:8]}"
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / f"{name}.py").write_text(UNTRACEABLE)
    factory = factories.load_factory(f"{name}:Gate", "model.factory", str(project))
    module = factory(num_classes=3).eval()
    paths = factories.code_paths(f"{name}:Gate")
    assert paths == [str((project / f"{name}.py").resolve())]
    x = torch.randn(4, 8)
    with mlflow.start_run():
        info = factories.log_module(module, "m", x.numpy(), paths)
    with torch.no_grad():
        expected = torch.cat([module(x), module(-x.abs())])
    torch.save(torch.stack([x, -x.abs()]), tmp_path / "x.pt")
    probe = textwrap.dedent(f"""
        import importlib.util, mlflow, torch
        assert importlib.util.find_spec({name!r}) is None
        model = mlflow.pytorch.load_model({info.model_uri!r})
        x = torch.load({str(tmp_path / 'x.pt')!r})
        torch.save(torch.cat([model(x[0]), model(x[1])]).detach(), {str(tmp_path / 'y.pt')!r})
        print(type(model).__module__)
    """)
    done = _run(probe, elsewhere, dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    assert name in done.stdout                     # the user's own class, imported from code/
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected)


USER = '''
import torch
from torch import nn


def make_net(num_classes=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, num_classes))


def load(n=120):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n + 40) % 3
    x = torch.randn(n + 40, 1, 8, generator=g) + y[:, None, None].float()
    return {"train": (x[:n], y[:n]), "test": (x[n:], y[n:]), "num_classes": 3}
'''


def _tiny_raw(name: str, **changes) -> dict:
    return {"experiment": f"own-{uuid.uuid4().hex[:6]}", "knob": "epochs", "temperatures": [2],
            "densities": [0.5], "data": {"factory": f"{name}:load"},
            "model": {"factory": f"{name}:make_net"}, "dense": {"epochs": 2, "batch_size": 32},
            "finetune": {"epochs": 1, "batch_size": 32, "seeds": [0, 1], "last_epochs": 1},
            "measure": {"lmc_points": 3, "cka_examples": 50}, "runtime": {"threads": 1},
            **changes}


@pytest.mark.slow
def test_dask_workers_import_the_factories_from_the_configs_folder(tracking_uri, tmp_path,
                                                                 monkeypatch, capsys):
    name = f"usernet_{uuid.uuid4().hex[:8]}"
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / f"{name}.py").write_text(USER)
    config = project / "grid.yaml"
    config.write_text(yaml.safe_dump(_tiny_raw(name)))
    monkeypatch.chdir(elsewhere)
    from tracking.store import configure, init_experiment

    configure()
    init_experiment(yaml.safe_load(config.read_text())["experiment"])  # the store exists first
    # worker PROCESSES: they must import the user's module themselves
    assert pipeline_main(["grid", str(config), "--no-progress", "--executor", "dask",
                          "--workers", "1"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "1 computed" in out and "0 failed" in out, out


@pytest.mark.slow
def test_the_python_entry_runs_a_grid_from_callables(tracking_uri, tmp_path):
    def make_net(num_classes=3):                  # defined here: known to this process only
        return nn.Sequential(nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, num_classes))

    def load(n=120):
        g = torch.Generator().manual_seed(0)
        y = torch.arange(n + 40) % 3
        x = torch.randn(n + 40, 1, 8, generator=g) + y[:, None, None].float()
        return {"train": (x[:n], y[:n]), "test": (x[n:], y[n:]), "num_classes": 3}

    raw = _tiny_raw("unused", data={"val_fraction": 0.2})
    summary = factories.run_config(raw, model=make_net, data=load, data_kwargs={"n": 100},
                                   progress=False)
    assert summary.ok and summary.computed == 1
    again = factories.run_config(raw, model=make_net, data=load, data_kwargs={"n": 100},
                                 progress=False)
    assert again.cached == 1 and again.computed == 0
    with pytest.raises(ValueError, match="executor 'dask' runs cells in other processes"):
        factories.run_config(raw, model=make_net, data=load, executor="dask", progress=False)
