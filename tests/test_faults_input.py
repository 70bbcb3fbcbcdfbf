"""Bad input is rejected before any compute, through the CLI, with exit code 2 and a message
naming the field, the value and what is allowed."""

from __future__ import annotations

import pytest
from helpers import REPO, cli, cli_env, tiny, write_config

from pipeline.__main__ import main

DEMO = str(REPO / "configs" / "demo.yaml")

# (--set overrides, fragments the message must contain: field, value, what is allowed)
CASES = {
    "density above 1": (["densities=[0.2, 1.5]"], ["densities", "1.5", "(0, 1]"]),
    "density zero": (["densities=[0]"], ["densities", "0", "(0, 1]"]),
    "temperature past the schedule": (["temperatures=[2, 200]"], ["temperature 200", "[1, 80]"]),
    "unknown dataset": (["data.name=cifar99"], ["data.name='cifar99'", "allowed: cifar10"]),
    "unknown model": (["model.name=resnet999"], ["model.name='resnet999'", "allowed: cnn1d"]),
    "unknown knob": (["knob=warmth"], ["knob 'warmth'", "allowed: batch_size, epochs"]),
    "unknown pruning method": (["prune.method=bogus"],
                               ["prune.method='bogus'", "allowed: alpha, global"]),
    "unknown metric": (["measure.metrics=[lmc, bogus]"],
                       ["measure.metrics", "'bogus'", "allowed: cka, lmc"]),
    "missing data directory": (["data.name=cifar10", "data.data_dir=/nonexistent/cifar"],
                               ["data.data_dir='/nonexistent/cifar'", "does not exist"]),
    "unknown top-level key": (["densitys=[0.1]"],
                              ["unknown key(s) ['densitys']", "allowed:", "'densities'"]),
    "unknown section key": (["dense.epoch=3"], ["dense: unknown key(s) ['epoch']", "'epochs'"]),
    "unknown finetune key": (["finetune.seed=[1]"],
                             ["finetune: unknown key(s) ['seed']", "'seeds'"]),
    "empty seeds": (["dense_seeds=[]"], ["config.dense_seeds=[]", "non-empty"]),
    "negative seed": (["dense_seeds=[-1]"], ["config.dense_seeds=[-1]", "integers >= 0"]),
    "empty finetune seeds": (["finetune.seeds=[]"], ["finetune.seeds", "at least one"]),
    "negative finetune seed": (["finetune.seeds=[0, -2]"],
                               ["finetune.seeds=[0, -2]", "integers >= 0"]),
    "zero members": (["runtime.max_members=0"], ["runtime.max_members=0", ">= 1"]),
    "unknown device": (["runtime.device=tpu"], ["runtime.device='tpu'", "allowed: cpu"]),
    "override without =": (["densities"], ["--set 'densities'", "key=value"]),
}


@pytest.mark.parametrize("overrides, fragments", CASES.values(), ids=CASES.keys())
def test_bad_config_is_rejected_before_any_compute(overrides, fragments, tracking_uri, tmp_path,
                                                   capsys):
    argv = ["grid", DEMO, "--no-progress"]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "mlflow.db").exists()          # not even the store was touched


def test_bad_executor_options_are_rejected_before_any_compute(tracking_uri, tmp_path, capsys):
    assert main(["grid", DEMO, "--executor", "dask", "--workers", "-2"]) == 2
    assert "workers=-2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:                # argparse: the executor registry
        main(["grid", DEMO, "--executor", "slurm"])
    assert exc.value.code == 2 and "invalid choice: 'slurm'" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_config_file(tracking_uri, tmp_path, capsys):
    assert main(["grid", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_unreachable_tracking_server_is_a_clear_error_without_the_password(
        tracking_uri, monkeypatch, tmp_path, capsys):
    import mlflow

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")     # only the project's backoff
    monkeypatch.setenv("THREE_REGIME_STORE_TIMEOUT", "2")   # the bounded wait, kept short
    config = write_config(tmp_path / "grid.yaml", tiny())
    try:
        bad_uri = "http://alice:S3cretPw@127.0.0.1:9"
        assert main(["grid", str(config), "--tracking-uri", bad_uri]) == 2
    finally:
        mlflow.set_tracking_uri(tracking_uri)        # configure() set the bad one process-wide
    err = capsys.readouterr().err
    assert "tracking store http://alice:***@127.0.0.1:9 unreachable after" in err
    assert "is the tracking server started" in err and "--store-timeout" in err
    assert "S3cretPw" not in err                      # MLflow's own message repeats the URL
    assert not (tmp_path / "mlflow.db").exists()      # nothing written to the test's own store


def test_malformed_yaml_through_the_real_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: x\nknob: epochs\ntemperatures: [2, 3\ndensities: [0.5]\n")
    result = cli(["pipeline", "grid", str(bad)], cli_env(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert result.returncode == 2
    assert f"config file '{bad}' is not valid YAML" in result.stderr and "line 3" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "mlflow.db").exists()
