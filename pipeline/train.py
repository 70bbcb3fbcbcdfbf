"""SGD / SAM training of M model copies at once, with optional fixed pruning masks.

One loop serves dense training (M = 1) and fine-tuning (M = the fine-tune seeds of one or
several cells). Member m draws its data order and augmentation from its own generator, so
a member's trajectory is the one a single-model loop with the same seed would follow: the
loss is the sum of the members' mean losses, hence each member's gradient is its own, and
SGD (momentum, weight decay) is elementwise, hence each member's update is its own.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline.data import Dataset
from pipeline.models import EnsembleModel, eval_batch_size, stack_inputs
from pipeline.specs import TrainSpec


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any parts (role names, seeds): distinct roles never share
    a random stream even when their user-facing seeds are equal."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch: a trailing batch of ONE example is skipped (no BatchNorm
    statistics from one example), so it is not counted."""
    full, rest = divmod(n, batch_size)
    return full + (rest > 1 or (full == 0 and rest == 1))


def total_epochs(spec: TrainSpec, n: int) -> int:
    """Number of (possibly partial) epochs the recipe runs over ``n`` examples."""
    if spec.iterations:
        return math.ceil(spec.iterations / steps_per_epoch(n, spec.batch_size))
    return spec.epochs


def total_iterations(spec: TrainSpec, n: int) -> int:
    """Optimizer steps the recipe takes over ``n`` examples (its length for schedules)."""
    return spec.iterations or spec.epochs * steps_per_epoch(n, spec.batch_size)


def lr_at(spec: TrainSpec, epoch: int, iteration: int, n: int) -> float:
    """Learning rate at a 0-based ``epoch`` / global ``iteration``.

    Epoch-length recipes step at epoch boundaries (milestone epochs = round(fraction * epochs));
    iteration-budget recipes step at iteration milestones. Cosine decays per iteration.
    """
    if spec.schedule == "constant":
        return spec.lr
    length = total_iterations(spec, n)
    if spec.schedule == "cosine":
        return 0.5 * spec.lr * (1 + math.cos(math.pi * min(iteration, length) / length))
    if spec.iterations:
        passed = sum(iteration >= round(m * spec.iterations) for m in spec.milestones)
    else:
        passed = sum(epoch >= round(m * spec.epochs) for m in spec.milestones)
    return spec.lr * spec.gamma ** passed


@dataclass
class EpochReport:
    epoch: int                      # 1-based: the number of epochs completed
    iteration: int
    train_loss: torch.Tensor        # [M] mean training loss of the epoch


@dataclass
class TrainState:
    """Everything needed to resume: weights, optimiser, position, every member's RNG."""

    model: dict
    optimizer: dict
    epoch: int
    iteration: int
    generators: list[torch.Tensor] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model": self.model, "optimizer": self.optimizer, "epoch": self.epoch,
                "iteration": self.iteration, "generators": self.generators}

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(d["model"], d["optimizer"], int(d["epoch"]), int(d["iteration"]),
                   list(d["generators"]))


def train(model: EnsembleModel, data: Dataset, spec: TrainSpec, seeds: list[int],
          masks: dict[str, torch.Tensor] | None = None,
          on_epoch_end: Callable[[EpochReport, EnsembleModel, Callable[[], TrainState]], None]
          | None = None,
          resume: TrainState | None = None, stream: str = "train",
          progress: Callable[[int], None] | None = None) -> EnsembleModel:
    """Train ``model`` (``len(seeds)`` members) in place; returns it.

    Args:
        seeds: one per member; member m's data order and augmentation come from
            ``derive_seed(stream, seeds[m])``.
        masks: prunable weight name -> {0,1} tensor shaped like the weight (all members
            stacked); pruned weights are zeroed before training and after every step, so they
            stay exactly zero (their momentum is irrelevant: it only ever touches zeros).
        on_epoch_end: called after every epoch with the report, the model and a function that
            snapshots the full training state (for checkpoints and resume).
        resume: a state from ``on_epoch_end``'s snapshot: training continues from it.
    """
    members = model.members
    if len(seeds) != members:
        raise ValueError(f"{len(seeds)} seeds for a model with {members} members")
    device = data.x_train.device
    n = len(data.x_train)
    bs = min(spec.batch_size, n)
    epochs = total_epochs(spec, n)
    last_iteration = total_iterations(spec, n)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                          weight_decay=spec.weight_decay)
    gens = [torch.Generator().manual_seed(derive_seed(stream, s)) for s in seeds]
    params = dict(model.named_parameters())
    mask_pairs = [(params[k], v.to(device=device, dtype=params[k].dtype))
                  for k, v in (masks or {}).items()]
    epoch, iteration = 0, 0
    if resume is not None:
        model.load_state_dict(resume.model)
        opt.load_state_dict(resume.optimizer)
        for g, s in zip(gens, resume.generators, strict=True):
            g.set_state(s)
        epoch, iteration = resume.epoch, resume.iteration
    _apply_masks(mask_pairs)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def snapshot() -> TrainState:
        return TrainState({k: v.detach().clone() for k, v in model.state_dict().items()},
                          _clone(opt.state_dict()), epoch, iteration, [g.get_state() for g in gens])

    model.train()
    while epoch < epochs and iteration < last_iteration:
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
        loss_sum = torch.zeros(members, device=device)
        seen = 0
        for start in range(0, n, bs):
            if iteration >= last_iteration:
                break
            if n - start == 1 and n > 1:
                break   # a trailing batch of one example has no BatchNorm statistics: skip it
            idx = perms[:, start:start + bs]                          # [M, b]
            xb = data.x_train[idx]                                     # [M, b, C, ...]
            if data.augment is not None:
                xb = torch.stack([data.augment(xb[m], gens[m]) for m in range(members)])
            yb = data.y_train[idx]                                     # [M, b]
            x_in = stack_inputs(xb)
            lr = lr_at(spec, epoch, iteration, n)
            for group in opt.param_groups:
                group["lr"] = lr
            losses = _member_losses(model, x_in, yb)
            if spec.sam_rho > 0:
                _sam_perturbed_grad(model, x_in, yb, losses, spec.sam_rho, bns)
            else:
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
            opt.step()
            _apply_masks(mask_pairs)
            loss_sum += losses.detach() * idx.shape[1]
            seen += idx.shape[1]
            iteration += 1
            if progress is not None:
                progress(1)
        epoch += 1
        mean_loss = loss_sum / max(seen, 1)
        if not torch.isfinite(mean_loss).all():
            raise DivergedError(f"non-finite training loss at epoch {epoch}: {mean_loss.tolist()}")
        if on_epoch_end is not None:
            on_epoch_end(EpochReport(epoch, iteration, mean_loss.cpu()), model, snapshot)
            model.train()
    return model


def _member_losses(model: EnsembleModel, x_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model.logits(x_in)                                        # [b, M, K]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.t().reshape(-1), reduction="none")
    return ce.view(logits.shape[0], logits.shape[1]).mean(0)           # [M]


def _sam_perturbed_grad(model, x_in, y, losses, rho, bns) -> None:
    """SAM (Foret et al. 2021): gradient at w + rho g/||g|| (per member), left in ``.grad``.

    BatchNorm running statistics are updated by the first pass only.
    """
    members = model.members
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(losses.sum(), params)
    sq = torch.zeros(members, device=x_in.device)
    for g in grads:
        sq += g.reshape(members, -1).pow(2).sum(1)
    scale = rho / (sq.sqrt() + 1e-12)                                  # [M]
    # every parameter is laid out member-major along dim 0 (see pipeline.models)
    eps = [(g.reshape(members, -1) * scale[:, None]).view_as(g) for g in grads]
    with torch.no_grad():
        for p, e in zip(params, eps, strict=True):
            p.add_(e)
    saved = [b.momentum for b in bns]
    for b in bns:
        b.momentum = 0.0
    try:
        losses2 = _member_losses(model, x_in, y)
        for p in params:
            p.grad = None
        losses2.sum().backward()
    finally:
        for b, mom in zip(bns, saved, strict=True):
            b.momentum = mom
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.sub_(e)


def _apply_masks(pairs) -> None:
    with torch.no_grad():
        for p, m in pairs:
            p.mul_(m)


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


@torch.no_grad()
def correct_counts(model: EnsembleModel, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int | None = None) -> torch.Tensor:
    """How many of ``x`` every member classifies correctly, eval mode: ``[M]`` integers."""
    model.eval()
    batch_size = batch_size or eval_batch_size(model, x)
    correct = torch.zeros(model.members, dtype=torch.long, device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        pred = model.logits_shared(xb).argmax(-1)                          # [M, b]
        correct += (pred == yb[None, :]).sum(1)
    return correct.cpu()


def evaluate(model: EnsembleModel, x: torch.Tensor, y: torch.Tensor,
             batch_size: int | None = None) -> torch.Tensor:
    """Accuracy of every member on the same examples, eval mode: ``[M]`` fractions."""
    return correct_counts(model, x, y, batch_size).float() / len(x)
