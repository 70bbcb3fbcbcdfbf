"""Artifacts of runs: state_dicts and JSON, written once, verified on read.

State dicts are saved with ``torch.save`` and read with ``torch.load(weights_only=True)``
(no pickle code execution). Every file's SHA-256 is recorded as a run tag at write time and
checked at read time, so a corrupt or truncated checkpoint is detected, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from tracking import keys
from tracking.store import with_retries

# MLflow draws a progress bar per download; a grid downloads one checkpoint per cell.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class CorruptArtifactError(RuntimeError):
    """An artifact is missing or does not match the checksum recorded when it was written."""


def _tag(artifact_path: str) -> str:
    return f"{keys.CHECKSUM_PREFIX}{artifact_path}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def log_files(client: MlflowClient, run_id: str, files: dict[str, object]) -> None:
    """Write and log several artifacts in ONE upload: {artifact path: object}.

    ``.pt`` objects go through ``torch.save``; ``.json`` through ``json.dump``; ``.csv`` and
    other text as str. Checksums are recorded as tags.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tags = {}
        for rel, obj in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith(".pt"):
                import torch

                torch.save(obj, path)
            elif rel.endswith(".json"):
                path.write_text(json.dumps(obj, indent=1, sort_keys=True))
            else:
                path.write_text(str(obj))
            tags[_tag(rel)] = sha256(path)
        with_retries(client.log_artifacts, run_id, str(root))
        from mlflow.entities import RunTag

        with_retries(client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def load_file(client: MlflowClient, run_id: str, artifact_path: str, dst: str | None = None):
    """Download and verify one artifact; ``.pt`` files are loaded (``weights_only=True``)."""
    import mlflow

    expected = client.get_run(run_id).data.tags.get(_tag(artifact_path))
    tmp = dst or tempfile.mkdtemp(prefix="artifact-")
    try:
        local = Path(with_retries(mlflow.artifacts.download_artifacts, run_id=run_id,
                                  artifact_path=artifact_path, dst_path=tmp,
                                  tracking_uri=mlflow.get_tracking_uri()))
    except Exception as e:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

        missing = (isinstance(e, MlflowException)
                   and e.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST))
        if (missing or "not found" in str(e).lower() or "no such file" in str(e).lower()
                or isinstance(e, OSError)):
            raise CorruptArtifactError(
                f"artifact {artifact_path!r} of run {run_id} is missing") from e
        raise
    if expected is None or sha256(local) != expected:
        raise CorruptArtifactError(
            f"artifact {artifact_path!r} of run {run_id} does not match its recorded checksum "
            f"({'none recorded' if expected is None else 'checksum mismatch'}); "
            "it will be recomputed")
    if artifact_path.endswith(".pt"):
        import torch

        try:
            return torch.load(local, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CorruptArtifactError(
                f"artifact {artifact_path!r} of run {run_id} cannot be read: {e}") from e
    if artifact_path.endswith(".json"):
        return json.loads(local.read_text())
    return local.read_text()
