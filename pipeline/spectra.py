"""Heavy-tailed weight spectra of the prunable layers (WeightWatcher), without data.

For each prunable weight the ``weightwatcher`` package forms the eigenvalues of W^T W, fits a
power law p(lambda) ~ lambda^-alpha to their tail (its own fit: xmin chosen by the
Kolmogorov-Smirnov distance) and reports alpha, the alpha-weighted norm
(alpha * log10 lambda_max) and the log10 spectral norm. This module only lays the weights out
the way the package reads them and collects its per-layer table:

- a linear weight ``[out, in]`` is one matrix;
- a 2-D convolution ``[out, in, kh, kw]`` is what the package calls a Conv2D layer: kh*kw
  matrices ``[out, in]``, one per kernel position, whose eigenvalues are pooled into one
  spectrum (its default);
- a 1-D convolution ``[out, in, k]`` is given to the package as ``[out, in, k, 1]``, i.e. the
  same per-position slicing (our choice: the package's own Conv1d branch hands it the 3-D
  tensor unsliced, and its state-dict reader does not know 3-D weights at all);
- weights are passed as float32 NumPy arrays, so the package never rounds them to half
  precision (it does that to torch tensors when a GPU is visible) and results do not depend on
  the host.

Small layers: a layer whose pooled spectrum has fewer than ``min_evals`` eigenvalues (the
package's rule: min(out, in) x positions; e.g. a stem convolution with one input channel has
only k) is skipped by the package. We report it with NaN values and the reason, never drop it
and never a zero; summaries average over the analysed layers only and count them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

# The package logs at WARNING on import (which SVD backend it found) and at INFO per layer.
logging.getLogger("weightwatcher").setLevel(logging.ERROR)

MIN_EVALS = 8          # the package's default (DEFAULT_MIN_EVALS)
MAX_EVALS = 15000      # the package's default: larger spectra are skipped (cost)
SUMMARY_KEYS = ("alpha", "alpha_weighted", "log_spectral_norm")


@dataclass
class LayerSpectrum:
    """One prunable layer's fit; NaN values and a ``reason`` when it was not analysed."""

    layer: str
    shape: tuple[int, ...]
    num_evals: int = 0                 # eigenvalues in the pooled spectrum (0 if skipped)
    alpha: float = math.nan            # power-law exponent of the tail
    alpha_weighted: float = math.nan   # alpha * log10(lambda_max)
    log_spectral_norm: float = math.nan
    log_norm: float = math.nan         # log10 of the Frobenius norm squared
    xmin: float = math.nan             # start of the fitted tail
    num_pl_spikes: int = 0             # eigenvalues in the fitted tail
    warning: str = ""                  # the package's own flag (e.g. under-trained)
    reason: str = ""                   # why the layer has no values ("" when analysed)

    @property
    def analysed(self) -> bool:
        return not self.reason

    def row(self) -> dict:
        out = asdict(self)
        out["shape"] = "x".join(str(s) for s in self.shape)
        return out


def _layout(w: torch.Tensor) -> np.ndarray | None:
    """The weight as the package reads it (see module doc); None for other shapes."""
    a = w.detach().to("cpu", torch.float32).numpy()
    if a.ndim == 2 or a.ndim == 4:
        return np.ascontiguousarray(a)
    if a.ndim == 3:
        return np.ascontiguousarray(a[..., None])
    return None


def _pooled_evals(a: np.ndarray) -> int:
    """Eigenvalues in the package's pooled spectrum of a 2-D or 4-D weight."""
    if a.ndim == 2:
        return min(a.shape)
    return min(a.shape[0], a.shape[1]) * a.shape[2] * a.shape[3]


def layer_spectra(weights: dict[str, torch.Tensor], min_evals: int = MIN_EVALS,
                  max_evals: int = MAX_EVALS) -> dict[str, LayerSpectrum]:
    """Per-layer spectral fit of ``weights`` (name -> tensor), in their order.

    Args:
        weights: the prunable weights of ONE model (e.g. a state_dict's ``*.weight`` entries).
        min_evals: layers whose pooled spectrum is smaller are reported as not analysed.
        max_evals: layers whose pooled spectrum is larger are reported as not analysed.
    """
    import weightwatcher as ww

    out: dict[str, LayerSpectrum] = {}
    arrays: dict[str, np.ndarray] = {}
    for i, (name, w) in enumerate(weights.items()):
        spec = LayerSpectrum(layer=name, shape=tuple(w.shape))
        out[name] = spec
        a = _layout(w)
        if a is None:
            spec.reason = f"a {w.dim()}-D weight is neither a linear nor a convolution weight"
            continue
        n = _pooled_evals(a)
        if n < min_evals:
            spec.reason = f"{n} eigenvalues < min_evals={min_evals}"
        elif n > max_evals:
            spec.reason = f"{n} eigenvalues > max_evals={max_evals}"
        elif not np.isfinite(a).all():
            spec.reason = "non-finite weights"
        elif not np.any(a):
            spec.reason = "all weights are zero"
        else:
            # the package's state-dict reader wants "<layer>.weight" keys; a running index
            # keeps names unique and maps its rows back
            arrays[f"l{i}.weight"] = a
    if not arrays:
        return out
    index = {f"l{i}": name for i, name in enumerate(weights)}
    # it prints notes ("SMALL N PL FIT") and warns about its own pandas calls
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watcher = ww.WeightWatcher(model=arrays)
        details = watcher.analyze(min_evals=min_evals, max_evals=max_evals, svd_method="accurate")
    seen = set()
    for row in details.to_dict("records"):
        name = index[row["longname"]]
        seen.add(name)
        spec = out[name]
        spec.num_evals = int(row["num_evals"])
        for key in ("alpha", "alpha_weighted", "log_spectral_norm", "log_norm", "xmin"):
            value = row.get(key, math.nan)
            setattr(spec, key, float(value) if value is not None else math.nan)
        spec.num_pl_spikes = int(row.get("num_pl_spikes", 0) or 0)
        spec.warning = str(row.get("warning", "") or "")
        if not math.isfinite(spec.alpha):
            spec.reason = "the power-law fit gave no finite alpha"
    for key in arrays:
        name = index[key[: -len(".weight")]]
        if name not in seen:
            out[name].reason = "skipped by weightwatcher"
    return out


def summarize(spectra: dict[str, LayerSpectrum]) -> dict[str, float]:
    """The package's standard summaries: means over the analysed layers of alpha, alpha-weighted
    and log spectral norm (NaN when none was analysed), and ``layers``, how many were."""
    done = [s for s in spectra.values() if s.analysed]
    out = {k: (float(np.mean([getattr(s, k) for s in done])) if done else math.nan)
           for k in SUMMARY_KEYS}
    out["layers"] = float(len(done))
    return out


def spectra_rows(spectra: dict[str, LayerSpectrum], **columns) -> list[dict]:
    """Per-layer rows (for a CSV artifact), each with the extra ``columns`` first."""
    return [{**columns, **s.row()} for s in spectra.values()]


def rows_to_csv(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_csv(index=False)


# --- what a cell and a dense run record (pipeline/cell.py, pipeline/grid.py) ------------------

def summary_metrics(spectra: dict[str, LayerSpectrum], which: str) -> dict[str, float]:
    """The summaries as metrics named by ``tracking.keys.spectral_metric`` (e.g. dense_alpha)."""
    from tracking import keys

    summary = summarize(spectra)
    out = {keys.spectral_metric(which, k): summary[k] for k in keys.SPECTRA_SUMMARIES}
    out[keys.spectral_metric(which, keys.SPECTRA_LAYERS)] = summary["layers"]
    return out


def cell_spectra(state: dict[str, torch.Tensor], mask: dict[str, torch.Tensor],
                 min_evals: int = MIN_EVALS) -> dict[str, dict[str, LayerSpectrum]]:
    """Spectra of the prunable layers (the mask's keys) of the dense checkpoint ``state`` and
    of the pruned model (``state`` times ``mask``), before any fine-tuning."""
    dense = {k: state[k] for k in mask}
    pruned = {k: state[k] * mask[k].to(state[k]) for k in mask}
    return {"dense": layer_spectra(dense, min_evals), "pruned": layer_spectra(pruned, min_evals)}


def cell_spectra_metrics(both: dict[str, dict[str, LayerSpectrum]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for which, spectra in both.items():
        out.update(summary_metrics(spectra, which))
    return out


def cell_spectra_csv(both: dict[str, dict[str, LayerSpectrum]]) -> str:
    return rows_to_csv([row for which, spectra in both.items()
                        for row in spectra_rows(spectra, model=which)])
