"""Every MLflow param, metric, tag and artifact name used by the project.

No other module spells an MLflow key as a string literal: import it from here, so that a
rename is one edit and the UI's columns stay consistent across runs.
"""

# --- tags -------------------------------------------------------------------------------
SPEC_HASH = "spec_hash"            # content address of the run's resolved spec
RUN_KIND = "run_kind"              # one of the KIND_* values below
KIND_GRID = "grid"
KIND_DENSE = "dense"
KIND_CELL = "cell"
KIND_CLASSIFIER = "classifier"
KIND_SELECTION = "selection"
KIND_STUDY = "study"
KIND_TRIAL = "trial"
FAILURE_REASON = "failure_reason"  # set on a FAILED run: why it failed
OWNER = "owner"                    # host:pid of the process computing the run
HEARTBEAT = "heartbeat"            # unix time of the owner's last sign of life
REGIME = "regime"                  # I, II-A or II-B, written by the selection layer
PARENT_RUN_ID = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"       # the description shown in the UI
STUDY_NAME = "study_name"
TRIAL_NUMBER = "trial_number"

# --- params (a cell run's and a dense run's) --------------------------------------------
DATASET = "dataset"
MODEL = "model"
KNOB = "knob"
TEMPERATURE = "temperature"
DENSITY = "density"
DENSE_SEED = "dense_seed"
FINETUNE_SEEDS = "finetune_seeds"
PRUNE_METHOD = "prune_method"
FINETUNE_RECIPE = "finetune_recipe"
FINETUNE_EPOCHS = "finetune_epochs"
DENSE_EPOCHS = "dense_epochs"
DENSE_ITERATIONS = "dense_iterations"
BATCH_SIZE = "batch_size"
LR = "lr"
WEIGHT_DECAY = "weight_decay"
SAM_RHO = "sam_rho"
DENSE_SPEC_HASH = "dense_spec_hash"
DENSE_RUN_ID = "dense_run_id"         # tag of a cell: the dense run its checkpoint came from
TEMPERATURES = "temperatures"         # params of a grid run: the config's lists
DENSITIES = "densities"
DENSE_SEEDS = "dense_seeds"

# --- metrics ----------------------------------------------------------------------------
TEST_ACC = "test_acc"
TEST_ACC_STD = "test_acc_std"
VAL_ACC = "val_acc"
VAL_ACC_STD = "val_acc_std"
PRUNED_ACC = "pruned_acc"          # test accuracy right after pruning, before fine-tuning
DENSE_ACC = "dense_acc"            # test accuracy of the dense checkpoint at the temperature
LMC_BARRIER = "lmc_barrier"        # train-error fraction; negative = a barrier
LMC_BARRIER_STD = "lmc_barrier_std"
CKA = "cka"
CKA_STD = "cka_std"
REALIZED_DENSITY = "realized_density"
CELL_SECONDS = "cell_seconds"
CELLS_COMPUTED = "cells_computed"  # metrics of a grid run: what this invocation did
CELLS_CACHED = "cells_cached"
CELLS_FAILED = "cells_failed"
GRID_SECONDS = "grid_seconds"


def pair_metric(base: str, a: int, b: int) -> str:
    """Per-pair metric name, e.g. ``lmc_barrier_pair_0_1`` (a, b index fine-tune copies)."""
    return f"{pair_metric_prefix(base)}{a}_{b}"


def pair_metric_prefix(base: str) -> str:
    """What every :func:`pair_metric` name of ``base`` starts with, e.g. ``cka_pair_``."""
    return f"{base}_pair_"


def member_metric(base: str, member: int) -> str:
    """Per fine-tuned copy metric name, e.g. ``test_acc_seed_2``."""
    return f"{base}_seed_{member}"


# step metrics (per-epoch curves; step = epoch)
CURVE_TRAIN_LOSS = "train_loss"
CURVE_VAL_ACC = "curve_val_acc"
CURVE_TEST_ACC = "curve_test_acc"

# --- artifacts --------------------------------------------------------------------------
ARTIFACT_SPEC = "spec.json"
ARTIFACT_CONFIG = "config.json"                # the grid run's resolved config
ARTIFACT_MASK = "mask.pt"
ARTIFACT_FINETUNED_DIR = "finetuned"           # finetuned/seed_<k>.pt
ARTIFACT_CHECKPOINT_DIR = "checkpoints"        # checkpoints/epoch_<e>.pt (dense runs)
ARTIFACT_LMC_CURVES = "lmc_curves.json"
ARTIFACT_RESULTS_CSV = "results.csv"
ARTIFACT_PLOTS_DIR = "plots"
CHECKSUM_PREFIX = "sha256/"                    # tag sha256/<artifact path> = hex digest

# --- results table and report (tracking.tables, tracking.plots) --------------------------
RUN_ID = "run_id"                                # results-table column: the cell's run id
# phase-diagram PNGs, logged under ARTIFACT_PLOTS_DIR of the grid parent run
PLOT_TEST_ERROR = "test_error.png"
PLOT_TEST_ERROR_NORMALIZED = "test_error_normalized.png"
PLOT_LMC_BARRIER = "lmc_barrier.png"
PLOT_CKA = "cka.png"
PLOT_PHASE_DIAGRAMS = "phase_diagrams.png"       # the four panels in one figure
# grid parent run: per density, the temperature of the best mean fine-tuned test accuracy
ARTIFACT_BEST_TEMPERATURES = "best_temperature_per_density.csv"

# --- selection (selection/: regime labels, classifier, model selection) ------------------
REGIME_EPS = "regime_eps"                  # param: LMC-barrier threshold, Regime I iff < eps
REGIME_TAU = "regime_tau"                  # param: CKA threshold, II-B iff cka >= tau
REGIME_EPS_SOURCE = "regime_eps_source"    # param: given / estimated / fallback
REGIME_TAU_SOURCE = "regime_tau_source"
REGIME_LABEL_METHOD = "regime_label_method"  # tag/param: jump, level, pooled or thresholds
P_REGIME_I = "p_regime_I"                  # metric of a cell run: probability of Regime I
P_REGIME_IIB = "p_regime_IIB"              # metric of a cell run: probability of II-B among II
FEATURE_SET = "feature_set"                # param: landscape (metrics + phase) or phase only
CV_SPLITTER = "cv_splitter"                # param: stratified / group_by_density
CV_SPLITS = "cv_splits"                    # param: number of folds actually used
SELECTION_DENSITIES = "selection_densities"  # param: the target densities of a selection run
ARTIFACT_REGIME_LABELS = "regime_labels.csv"
ARTIFACT_REGIME_THRESHOLDS = "regime_thresholds.json"
ARTIFACT_REGIME_SENSITIVITY = "regime_sensitivity.csv"  # labels changed as eps, tau move
ARTIFACT_SELECTION_TABLE = "selection.csv"
PLOT_REGIME_MAP = "regime_map.png"         # also logged under ARTIFACT_PLOTS_DIR of the grid run
PLOT_SELECTION_REGRET = "selection_regret.png"
MODEL_LANDSCAPE = "regime_classifier_landscape"  # logged model names within a classifier run
MODEL_PHASE = "regime_classifier_phase"
MODEL_PRUNED = "pruned_model"              # logged model name within a cell run (registry)

# --- tuner (selection/tuner.py: Optuna study and trial runs) -----------------------------
SAMPLER = "sampler"                        # param of a study run: regime, tpe, tpe2, gp, ...
TRIAL_STATE = "trial_state"                # tag of a trial run: COMPLETE, PRUNED, FAIL
CELL_RUN_ID = "cell_run_id"                # tag: the cell run a trial looked up
BEST_TRIAL_NUMBER = "best_trial_number"    # tag of a study run
BEST_VALUE = "best_value"                  # metric of a study run: best objective so far
BEST_TEMPERATURE = "best_temperature"      # metric of a study run


def regime_count_metric(regime: str) -> str:
    """Number of cells labelled ``regime``, e.g. ``n_regime_II-A``."""
    return f"n_regime_{regime}"


def cv_accuracy_metric(feature_set: str) -> str:
    """Cross-validated accuracy of a classifier, e.g. ``cv_accuracy_phase``."""
    return f"cv_accuracy_{feature_set}"


def mean_regret_metric(method: str) -> str:
    """Mean regret (test accuracy) of a model-selection method over the target densities."""
    return f"mean_regret_{method}"


# --- scale-out and faults (tracking/cache.py claim protocol) ------------------------------
KIND_CLAIM = "claim"               # short-lived lock run: who may start or resume a dense run
RESUMABLE = "resumable"            # tag "false": never reopen this run (corrupt or lost claim)
ARTIFACT_RESUME_SLOT = "resume/state_{}.pt"    # two slots (0, 1) alternating by epoch, see grid

# --- adaptive regime mapping (selection/mapping.py, ``python -m selection map``) -----------
KIND_MAP = "map"                               # the map run; the cells it computes nest under it
MAP_STOP_REASON = "map_stop_reason"            # tag of a map run: budget, settled, grid exhausted
MAP_BUDGET = "map_budget"                      # tag of a map run: the latest --budget given
MAP_CELLS_RUN = "map_cells_run"                # metric (step = round): points run so far
MAP_LABELS_CHANGED = "map_labels_changed"      # metric (step = round): labels changed since last
MAP_MAX_UNCERTAINTY = "map_max_uncertainty"    # metric: max 1 - p(label) over points not run
MAP_AGREEMENT = "map_agreement"                # metric: agreement with a reference map, if any
ARTIFACT_MAP_TABLE = "map/regime_map.csv"      # every point: label, probabilities, run flag
ARTIFACT_MAP_BEST = "map/best_temperature.csv"  # per density: predicted best and its support
ARTIFACT_MAP_ROUNDS = "map/rounds.json"        # the rounds: points, why, thresholds
PLOT_MAP = "predicted_regime_map.png"          # under ARTIFACT_PLOTS_DIR of the map run

# --- weight spectra and curvature (pipeline/spectra.py, pipeline/curvature.py) -------------
# Cell metrics (only when measure.spectra / measure.hessian is on; absent, never zero, when off):
# the weightwatcher summaries of the dense checkpoint's and the pruned model's prunable layers,
# e.g. dense_alpha, pruned_alpha_weighted, pruned_log_spectral_norm; the dense run logs the
# dense ones per checkpoint (step = epoch)
SPECTRA_SUMMARIES = ("alpha", "alpha_weighted", "log_spectral_norm")
SPECTRA_LAYERS = "spectra_layers"     # summary: how many layers were analysed


def spectral_metric(which: str, summary: str) -> str:
    """``which`` is "dense" or "pruned"; e.g. ``spectral_metric("pruned", "alpha")``."""
    return f"{which}_{summary}"


SPECTRAL_COLUMNS = [spectral_metric(w, s) for w in ("dense", "pruned") for s in SPECTRA_SUMMARIES]
HESSIAN_TRACE = "hessian_trace"                  # Hutchinson estimate (first fine-tuned copy)
HESSIAN_TRACE_STDERR = "hessian_trace_stderr"    # its standard error over the probes
HESSIAN_TOP_EIGENVALUE = "hessian_top_eigenvalue"  # power iteration
HESSIAN_EXAMPLES = "hessian_examples"            # training examples the loss was taken over
CURVATURE_COLUMNS = [HESSIAN_TRACE, HESSIAN_TRACE_STDERR, HESSIAN_TOP_EIGENVALUE]
ARTIFACT_SPECTRA = "spectra.csv"                 # per layer: alpha, ... (cell: dense and pruned)
ARTIFACT_SPECTRA_DIR = "spectra"                 # dense runs: spectra/epoch_<e>.csv
