"""Register a selected pruned model in the MLflow model registry, with an alias.

Checkpoints of every cell are plain ``state_dict`` artifacts (fast); only models a user (or
the tuner) selects become registered models, logged with ``mlflow.pytorch.log_model`` (an
input example and a signature, which takes seconds) and addressed by alias, never by stage.
"""

from __future__ import annotations

import mlflow

from pipeline.data import load_dataset
from pipeline.factories import log_module, plain_model
from pipeline.models import build_model
from pipeline.specs import CellSpec, DenseSpec, spec_from_dict
from tracking import keys
from tracking.artifacts import load_file
from tracking.store import get_client, with_retries


def register_cell_model(cell_run_id: str, name: str, alias: str = "champion",
                        description: str | None = None) -> str:
    """Register the fine-tuned copy of a cell with the best VALIDATION accuracy; returns the
    model version. The logged model takes ``[N, C, ...]`` inputs and returns logits."""
    client = get_client()
    run = client.get_run(cell_run_id)
    spec = load_file(client, cell_run_id, keys.ARTIFACT_SPEC)
    cell: CellSpec = spec_from_dict(CellSpec, spec["cell"])
    dense: DenseSpec = spec_from_dict(DenseSpec, spec["dense"])
    seeds = list(cell.finetune.seeds)
    val = [run.data.metrics.get(keys.member_metric(keys.VAL_ACC, s), float("-inf")) for s in seeds]
    seed = seeds[max(range(len(seeds)), key=lambda i: val[i])]
    state = load_file(client, cell_run_id, f"{keys.ARTIFACT_FINETUNED_DIR}/seed_{seed}.pt")
    data = load_dataset(dense.data)
    code_paths = None
    if dense.model.factory:
        # the user's own plain module (not its one-member ensemble), with the file or package
        # that defines it, so that mlflow.pytorch.load_model works where it is not importable
        model, code_paths = plain_model(dense.model, state)
    else:
        model = build_model(dense.model, data.input_shape, data.num_classes)
        model.load_state_dict(state)
        model.eval()
    example = data.x_val[:2].cpu().numpy() if len(data.x_val) else data.x_test[:2].cpu().numpy()
    with mlflow.start_run(run_id=cell_run_id, nested=True):
        if code_paths is None:
            info = mlflow.pytorch.log_model(model, name=keys.MODEL_PRUNED, input_example=example)
        else:
            info = log_module(model, keys.MODEL_PRUNED, example, code_paths)
    version = with_retries(mlflow.register_model, info.model_uri, name)
    with_retries(client.set_registered_model_alias, name, alias, version.version)
    text = description or (
        f"Pruned {dense.model.name} on {dense.data.name}: {cell.knob}={cell.temperature:g}, "
        f"density {cell.prune.density:g} ({cell.prune.method}), fine-tune seed {seed} (best "
        f"validation accuracy {max(val):.4f} of the cell's copies). Source cell run "
        f"{cell_run_id}.")
    with_retries(client.update_model_version, name, version.version, description=text)
    with_retries(client.update_registered_model, name, description=(
        "Pruned models selected by the regime-guided tuner; load with "
        f"mlflow.pytorch.load_model('models:/{name}@{alias}')."))
    return version.version


