"""The spectra ablation and the spectral regime predictor on synthetic tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from selection import classifier
from selection.spectral import (
    SPECTRAL,
    SpectralRegimePredictor,
    ablation,
    fit_spectral_classifier,
)
from tracking import keys


def _table(seed: int = 0) -> pd.DataFrame:
    """Regimes set by the pruned model's alpha, which is unrelated to temperature and density:
    only the spectral feature sets can predict them."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in (2, 5, 10, 20, 40, 80):
        for d in (0.05, 0.1, 0.2, 0.4, 0.8):
            alpha = rng.uniform(2, 6)
            row = {keys.KNOB: "epochs", keys.TEMPERATURE: t, keys.DENSITY: d,
                   keys.LMC_BARRIER: -0.1 if alpha > 4 else 0.0, keys.CKA: rng.uniform(0.5, 1),
                   keys.REGIME: "I" if alpha > 4 else "II-A"}
            row.update({c: rng.normal() for c in keys.SPECTRAL_COLUMNS})
            row["pruned_alpha"] = alpha
            rows.append(row)
    return pd.DataFrame(rows)


def test_ablation_finds_the_information_in_the_spectra():
    table = ablation(_table())
    acc = dict(zip(table["feature_set"], table["cv_accuracy"], strict=True))
    assert set(acc) == {"phase", "spectral", "spectral_landscape", "landscape"}
    assert acc["spectral"] > acc["phase"] + 0.2
    assert acc["spectral"] >= 0.85 and acc["landscape"] >= 0.85
    assert table["cells"].eq(30).all()
    # the extra feature sets are visible to the classifier only during the ablation
    assert SPECTRAL not in classifier.FEATURE_SETS


def test_ablation_needs_spectral_columns_and_uses_rows_that_have_them():
    df = _table()
    with pytest.raises(ValueError, match="measure.spectra=true"):
        ablation(df.drop(columns=["dense_alpha"]))
    df.loc[:4, "pruned_alpha_weighted"] = np.nan
    assert ablation(df)["cells"].eq(25).all()


def test_spectral_predictor_answers_from_checkpoint_features():
    model = fit_spectral_classifier(_table())
    calls = []

    def features(t):
        calls.append(t)
        if t == 999:
            return None
        base = {c: 0.0 for c in keys.SPECTRAL_COLUMNS}
        return {**base, "pruned_alpha": 5.8 if t < 10 else 2.2}

    predict = SpectralRegimePredictor(model, 0.1, features)
    assert predict(5) == "I" and predict(40) == "II-A"
    assert predict(999) is None
    assert predict(5) == "I" and calls.count(5) == 1          # computed once per temperature


@pytest.mark.slow
def test_replay_with_the_predictor_queries_it_and_restores_the_sampler_factory(monkeypatch):
    from selection import replay, spectral

    asked = []
    real = spectral.SpectralRegimePredictor.__call__

    def counted(self, t):
        asked.append((self.density, t))
        return real(self, t)

    monkeypatch.setattr(spectral.SpectralRegimePredictor, "__call__", counted)
    df = _table()
    df[keys.VAL_ACC] = 0.5 + 0.01 * np.log(df[keys.TEMPERATURE]) * (df[keys.DENSITY] > 0.2)
    original = replay.create_sampler
    out = spectral.replay_trials_saved(df, repeats=2)
    assert replay.create_sampler is original
    assert {d for d, _ in asked} == {0.05, 0.1, 0.2, 0.4, 0.8}
    assert sorted(out[keys.DENSITY]) == [0.05, 0.1, 0.2, 0.4, 0.8]
    assert (out["mean_trials_plain"] >= 1).all() and (out["mean_trials_predicted"] >= 1).all()
