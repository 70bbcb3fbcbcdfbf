"""Dense training at a temperature: which run serves a temperature, and training it.

For the ``epochs`` knob ONE fixed-length run per dense seed serves every temperature: the
temperature T is the checkpoint at the end of epoch T, and the run keeps a checkpoint after
every epoch, so extending a grid's temperatures never retrains. Every other knob sets a
field of the recipe: one run per value, pruned at its end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.data import Dataset
from pipeline.knobs import get_knob
from pipeline.models import build_model
from pipeline.specs import DenseSpec
from pipeline.train import EpochReport, TrainState, derive_seed, total_epochs, train

State = dict[str, torch.Tensor]
FINAL = 0   # CellSpec.checkpoint_epoch value meaning "the end of the dense run"


def dense_for(knob_name: str, value: float, base: DenseSpec) -> tuple[DenseSpec, int]:
    """The dense run that produces temperature ``value`` and the checkpoint epoch to prune.

    Raises ValueError (before any compute) for a temperature the schedule cannot produce.
    """
    knob = get_knob(knob_name)
    if knob.integer and float(value) != int(value):
        raise ValueError(f"temperature {value!r} for knob {knob_name!r}: must be an integer")
    if knob.name == "epochs":
        if base.train.iterations:
            raise ValueError("knob 'epochs' needs an epoch-length dense recipe: "
                             "dense.iterations must be 0")
        if not 1 <= value <= base.train.epochs:
            raise ValueError(f"temperature {value!r} (epochs): the dense schedule runs "
                             f"{base.train.epochs} epochs, so temperatures must be in "
                             f"[1, {base.train.epochs}]")
        return base, int(value)
    if knob.name == "batch_size" and not base.train.iterations:
        raise ValueError("knob 'batch_size' trains every batch size for the same number of steps: "
                         "set dense.iterations (paper: 62400)")
    if value <= 0 and knob.name in ("batch_size", "lr"):
        raise ValueError(f"temperature {value!r} for knob {knob_name!r}: must be > 0")
    if value < 0:
        raise ValueError(f"temperature {value!r} for knob {knob_name!r}: must be >= 0")
    cast = int(value) if knob.integer else float(value)
    return base.replace(train=base.train.replace(**{knob.dense_field: cast})), FINAL


def train_dense(spec: DenseSpec, data: Dataset, keep_every_epoch: bool,
                on_checkpoint: Callable[[int, State], None] | None = None,
                on_epoch_state: Callable[[TrainState], None] | None = None,
                resume: TrainState | None = None, progress=None) -> dict[int, State]:
    """Train the dense model of ``spec``; returns {epoch: state_dict} of the kept checkpoints.

    With ``keep_every_epoch`` every epoch's weights are kept (the epochs knob), otherwise only
    the final ones, under key ``FINAL``. ``on_checkpoint`` sees each kept checkpoint as it is
    made, ``on_epoch_state`` the full resumable state after every epoch.
    """
    n = len(data.x_train)
    last = total_epochs(spec.train, n)
    model = build_model(spec.model, data.input_shape, data.num_classes,
                        seed=derive_seed("init", spec.seed))
    model.to(data.x_train.device)
    kept: dict[int, State] = {}

    def end_of_epoch(report: EpochReport, m, snapshot) -> None:
        if keep_every_epoch or report.epoch == last:
            key = report.epoch if keep_every_epoch else FINAL
            kept[key] = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
            if on_checkpoint is not None:
                on_checkpoint(key, kept[key])
        if on_epoch_state is not None:
            on_epoch_state(snapshot())

    train(model, data, spec.train, [spec.seed], on_epoch_end=end_of_epoch, resume=resume,
          stream="dense", progress=progress)
    return kept
