"""Security: no code runs from a checkpoint or a config; passwords in store URLs stay secret."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from helpers import (
    cli,
    cli_env,
    pg_url,
    postgres_database,
    start_cli,
    stop,
    tiny,
    write_config,
)
from mlflow import MlflowClient
from mlflow.entities import ViewType

from pipeline.__main__ import main
from tracking.artifacts import CorruptArtifactError, load_file, log_files
from tracking.store import get_client, init_experiment


class _Payload:
    """Unpickling this runs code: it creates ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_checkpoint_carrying_code_is_refused_not_run(tracking_uri, tmp_path):
    marker = tmp_path / "pwned"
    client = get_client()
    run = client.create_run(init_experiment("security"))
    # written through the project's own writer: the checksum matches, only weights_only stops it
    payload = {"w": torch.ones(2), "x": _Payload(marker)}
    log_files(client, run.info.run_id, {"checkpoints/epoch_0001.pt": payload})
    with pytest.raises(CorruptArtifactError, match="cannot be read"):
        load_file(client, run.info.run_id, "checkpoints/epoch_0001.pt")
    assert not marker.exists()


def test_a_config_with_python_tags_is_refused_not_run(tracking_uri, tmp_path, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"experiment: !!python/object/apply:os.mkdir ['{marker}']\nknob: epochs\n"
                      "temperatures: [2]\ndensities: [0.5]\n")
    assert main(["grid", str(config)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    assert not marker.exists()


# An unreachable server URL with a password: tests/test_faults_input.py (not printed either).
PASSWORD = "S3cretPw42"


@pytest.mark.slow
def test_passwords_in_store_urls_are_never_logged_or_printed(tmp_path):
    """The tuner runs a real cell with both stores behind password URLs (PostgreSQL trusts
    local connections, so the password is accepted and ignored): nothing shows it."""
    with (postgres_database("three_regime_mlflow") as tracking_db,
          postgres_database("three_regime_optuna") as study_db):
        tracking_uri, storage = pg_url(tracking_db, PASSWORD), pg_url(study_db, PASSWORD)
        config = write_config(tmp_path / "grid.yaml", tiny(temperatures=[3], densities=[0.5]))
        env = cli_env(tracking_uri, tmp_path / "mlruns")
        tune = ["selection", "tune", "--config", str(config), "--density", "0.5",
                "--n-trials", "1", "--tracking-uri", tracking_uri]
        # a storage that cannot be reached: the error does not show the password either (it
        # stops before writing anything, so it runs beside the real tune, on the other core)
        nowhere = pg_url("nowhere", PASSWORD).replace(":5432/", ":9/")
        down = start_cli([*tune, "--storage", nowhere], {**env, "THREE_REGIME_STORE_TIMEOUT": "3"},
                         tmp_path / "down.log")
        try:
            tuned = cli([*tune, "--storage", storage], env)
            down.wait(timeout=300)
        finally:
            stop(down, signal.SIGKILL)
        assert tuned.returncode == 0, tuned.stdout + tuned.stderr
        assert PASSWORD not in tuned.stdout + tuned.stderr
        down_out = (tmp_path / "down.log").read_text()
        assert down.returncode != 0 and PASSWORD not in down_out, down_out[-3000:]

        client = MlflowClient(tracking_uri)
        experiments = client.search_experiments(view_type=ViewType.ALL)
        runs = client.search_runs([e.experiment_id for e in experiments],
                                  run_view_type=ViewType.ALL)
        assert {r.data.tags.get("run_kind") for r in runs} >= {"dense", "cell", "study", "trial"}
        for run in runs:
            assert PASSWORD not in json.dumps([run.data.params, run.data.tags]), run.info.run_name
        for e in experiments:
            assert PASSWORD not in json.dumps(e.tags)
        for path in (tmp_path / "mlruns").rglob("*.json"):
            assert PASSWORD not in path.read_text(), path
        import optuna

        from selection.tuner import make_storage

        for summary in optuna.get_all_study_summaries(make_storage(storage)):
            study = optuna.load_study(study_name=summary.study_name, storage=make_storage(storage))
            assert PASSWORD not in json.dumps(study.user_attrs, default=str)
            for trial in study.trials:
                attrs = [trial.user_attrs, trial.system_attrs, trial.params]
                assert PASSWORD not in json.dumps(attrs, default=str)
