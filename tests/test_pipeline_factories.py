"""A model and data of one's own, named by import path: config parsing, identity
(fingerprints in the spec hash), datasets from factories, and bad input rejected early."""

from __future__ import annotations

import hashlib
import json
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline import factories
from pipeline.__main__ import main
from pipeline.config import load_config, parse_config
from pipeline.data import load_dataset
from pipeline.specs import DataSpec, ModelSpec, cell_hash, dense_hash

REPO = Path(__file__).resolve().parent.parent

# A user's file: a small 1-D CNN with BatchNorm and generated data (x: [N, 1, 8], 3 classes).
USER_CODE = '''
import torch
from torch import nn


def make_net(hidden=8, num_classes=3, stride=1):
    return nn.Sequential(nn.Conv1d(1, hidden, 3, stride=stride, padding=1), nn.BatchNorm1d(hidden),
                         nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(hidden, num_classes))


def not_a_module():
    return {"layers": 3}


def load(n=60, classes=3, seed=0, with_val=False, as_dataset=False, float64=False):
    g = torch.Generator().manual_seed(seed)

    def part(k):
        y = torch.arange(k) % classes
        x = torch.randn(k, 1, 8, generator=g) + y[:, None, None].float()
        return (x.double() if float64 else x), y

    out = {"train": part(n), "test": part(30), "num_classes": classes}
    if with_val:
        out["val"] = part(12)
    if as_dataset:
        out["train"] = torch.utils.data.TensorDataset(*out["train"])
    return out


def short_labels():
    x = torch.randn(20, 1, 8)
    return {"train": (x, torch.zeros(19, dtype=torch.long)),
            "test": (x, torch.zeros(20, dtype=torch.long)), "num_classes": 3}


def big_labels():
    x = torch.randn(20, 1, 8)
    y = torch.full((20,), 3)
    return {"train": (x, y), "test": (x, y), "num_classes": 3}


def no_test():
    x = torch.randn(20, 1, 8)
    return {"train": (x, torch.zeros(20, dtype=torch.long)), "num_classes": 3}
'''


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A folder holding the user's module (a unique name: modules are cached per process) and
    a config writer; the working directory is elsewhere, so imports come from the config's
    folder."""
    name = f"usernet_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / f"{name}.py").write_text(USER_CODE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def config(model=None, data=None, **extra) -> Path:
        raw = {"experiment": "own", "knob": "epochs", "temperatures": [1, 2],
               "densities": [0.3, 0.6],
               "data": data if data is not None else {"factory": f"{name}:load"},
               "model": model if model is not None else
               {"factory": f"{name}:make_net", "kwargs": {"hidden": 8, "num_classes": 3}},
               "dense": {"epochs": 2, "batch_size": 16},
               "finetune": {"epochs": 1, "batch_size": 16, "seeds": [0, 1], "last_epochs": 1},
               "measure": {"lmc_points": 3, "cka_examples": 20}, **extra}
        path = folder / f"config_{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(json.dumps(raw))          # JSON is YAML
        return path

    config.module = name
    config.folder = folder
    return config


def test_demo_hashes_are_unchanged_by_the_factory_fields():
    # computed with the code before model/data factories existed (git dda87ee)
    cfg = load_config(REPO / "configs" / "demo.yaml")
    cells = cfg.cells()
    assert dense_hash(cells[0][0]) == "b228106cc9bc31be"
    digest = hashlib.sha256(json.dumps(sorted(cell_hash(c, d) for d, c, _ in cells)).encode())
    assert digest.hexdigest()[:16] == "ffbeb0c0ac1998ed"
    assert cfg.model.factory == "" and cfg.model.fingerprint == "" and cfg.data.factory == ""


def test_a_config_names_factories_imported_from_its_folder(user):
    cfg = load_config(user())
    m = user.module
    assert cfg.model.factory == f"{m}:make_net" and cfg.model.name == f"{m}:make_net"
    assert json.loads(cfg.model.kwargs) == {"hidden": 8, "num_classes": 3}
    assert cfg.model.code_dir == str(user.folder.resolve())
    assert len(cfg.model.fingerprint) == 16 and len(cfg.data.fingerprint) == 16
    assert cfg.data.name == f"{m}:load"
    identity = cfg.base_dense(0).identity()
    assert identity["model"]["fingerprint"] == cfg.model.fingerprint
    assert identity["data"]["fingerprint"] == cfg.data.fingerprint
    assert "code_dir" not in identity["model"]        # the same work from another folder


def test_kwargs_are_canonical_and_every_change_reaches_the_hash(user):
    m = user.module

    def dense(model_kwargs=None, data_kwargs=None, model=None):
        model = model or {"factory": f"{m}:make_net", "kwargs": model_kwargs or {"hidden": 8}}
        data = {"factory": f"{m}:load", "kwargs": data_kwargs or {}}
        return load_config(user(model=model, data=data)).base_dense(0)

    base = dense({"hidden": 8, "num_classes": 3})
    same = dense({"num_classes": 3, "hidden": 8})                  # other order, same work
    assert dense_hash(same) == dense_hash(base)
    wider = dense({"hidden": 9, "num_classes": 3})
    assert wider.model.fingerprint != base.model.fingerprint
    # a stride changes no parameter shape; the fingerprint sees it in the module's structure
    strided = dense({"hidden": 8, "num_classes": 3, "stride": 2})
    assert strided.model.fingerprint != base.model.fingerprint
    other_data = dense({"hidden": 8, "num_classes": 3}, {"seed": 1})
    assert other_data.data.fingerprint != base.data.fingerprint
    assert dense_hash(other_data) != dense_hash(base)
    assert len({dense_hash(d) for d in (base, wider, strided, other_data)}) == 4


def test_the_fingerprint_is_the_hash_of_what_is_built():
    a = nn.Sequential(nn.Linear(4, 3))
    fingerprint = factories.module_fingerprint
    assert fingerprint(a) == fingerprint(nn.Sequential(nn.Linear(4, 3)))
    assert fingerprint(a) != fingerprint(nn.Sequential(nn.Linear(4, 2)))
    assert factories.module_fingerprint(a) != factories.module_fingerprint(a.double())
    relu = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    assert factories.module_fingerprint(relu) != factories.module_fingerprint(
        nn.Sequential(nn.Linear(4, 3), nn.GELU()))


def test_kwargs_given_as_a_mapping_or_text_are_the_same_spec():
    a = ModelSpec(factory="m:f", kwargs={"b": 1, "a": [1, 2]})
    b = ModelSpec(factory="m:f", kwargs='{"a": [1, 2], "b": 1}')
    assert a.kwargs == b.kwargs == '{"a":[1,2],"b":1}' and a.spec_hash() == b.spec_hash()
    assert ModelSpec(factory="m:f", kwargs={}).kwargs == ""
    with pytest.raises(ValueError, match="model.kwargs"):
        ModelSpec(factory="m:f", kwargs=[1, 2])
    with pytest.raises(ValueError, match=r"data.kwargs=\{'n': 3\} is set but data.factory is not"):
        parse_config({"experiment": "e", "knob": "epochs", "temperatures": [1], "densities": [0.5],
                      "data": {"kwargs": {"n": 3}}})


def test_a_data_factory_becomes_a_dataset(user):
    cfg = load_config(user(data={"factory": f"{user.module}:load", "kwargs": {"n": 60},
                                 "val_fraction": 0.2}))
    ds = load_dataset(cfg.data)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (48, 12, 30)
    assert ds.num_classes == 3 and ds.input_shape == (1, 8)
    assert ds.y_train.dtype == torch.int64 and ds.x_train.dtype == torch.float32
    raw = factories.load_factory_data(cfg.data)
    # the split is the built-in datasets' one: a permutation by split_seed, both parts sorted
    assert torch.equal(torch.cat([ds.x_train, ds.x_val]).sort(0).values, raw.x_train.sort(0).values)
    given = load_config(user(data={"factory": f"{user.module}:load",
                                   "kwargs": {"with_val": True, "as_dataset": True,
                                              "float64": True}, "train_subset": 40}))
    ds = load_dataset(given.data)
    assert (len(ds.x_train), len(ds.x_val)) == (40, 12)              # val as given, no split
    assert ds.x_train.dtype == torch.float32 and ds.x_val.dtype == torch.float32


def test_a_built_in_model_runs_on_a_data_factory(user):
    cfg = load_config(user(model={"name": "mlp", "width": 0.1}))
    from pipeline.models import build_model

    ds = load_dataset(cfg.data)
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, members=2).eval()
    with torch.no_grad():
        assert model.logits_shared(ds.x_test[:5]).shape == (2, 5, 3)


def test_a_built_in_dataset_with_a_model_factory_is_checked_without_its_files(user, tmp_path):
    cfg = load_config(REPO / "configs" / "resnet18_cifar10.yaml",
                      [f"data.data_dir={tmp_path}", "runtime.device=cpu"])
    assert cfg.model.factory == "pipeline.factories:resnet18_cifar" and cfg.model.fingerprint
    with pytest.raises(ValueError, match="one logit per class"):
        load_config(REPO / "configs" / "resnet18_cifar10.yaml",
                    [f"data.data_dir={tmp_path}", "runtime.device=cpu", "data.name=cifar100"])


def test_resnet18_cifar_keeps_32x32_resolution():
    net = factories.resnet18_cifar(num_classes=10)
    assert net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert isinstance(net.maxpool, nn.Identity)
    features = {}
    net.layer4.register_forward_hook(lambda m, i, o: features.update(layer4=o.shape))
    assert net.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert tuple(features["layer4"][2:]) == (4, 4)


def test_augment_with_or_without_a_generator_is_reproducible_per_copy():
    def with_gen(x, generator):
        return x + torch.rand(x.shape, generator=generator)

    def without(x):
        return x + torch.rand(x.shape)

    x = torch.zeros(4, 2)
    for fn in (with_gen, without):
        aug = factories._adapt_augment(fn, "m:f")
        a = aug(x, torch.Generator().manual_seed(1))
        b = aug(x, torch.Generator().manual_seed(1))
        c = aug(x, torch.Generator().manual_seed(2))
        assert torch.equal(a, b) and not torch.equal(a, c), fn.__name__
    state = torch.random.get_rng_state()
    factories._adapt_augment(without, "m:f")(x, torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.random.get_rng_state())     # the global stream is untouched


def test_code_paths_name_the_users_file_only(user):
    cfg = load_config(user())
    assert factories.code_paths(cfg.model.factory) == [
        str((user.folder / f"{user.module}.py").resolve())]
    assert factories.code_paths("torchvision.models:resnet18") == []
    assert factories.code_paths("pipeline.factories:resnet18_cifar") == []


def test_plain_model_takes_a_one_member_state(user):
    cfg = load_config(user())
    from pipeline.models import build_model

    ensemble = build_model(cfg.model, (1, 8), 3, members=1, seed=0)
    module, _ = factories.plain_model(cfg.model, ensemble.state_dict())
    x = torch.randn(5, 1, 8)
    ensemble.eval()
    with torch.no_grad():
        assert torch.allclose(module(x), ensemble.logits_shared(x)[0], atol=1e-6)


def test_a_callable_from_a_notebook_resolves_in_this_process_only():
    def make():                       # defined inside a function: not importable by its path
        return nn.Linear(2, 2)

    path = factories.factory_path(make)
    assert not factories.importable(path)
    assert factories.load_factory(path, "model.factory") is make
    assert factories.factory_path(factories.resnet18_cifar) == "pipeline.factories:resnet18_cifar"
    with pytest.raises(ValueError, match="known only to the process"):
        factories._import_path(path, "model.factory", "")


def test_parse_config_with_a_callable_path(user):
    raw = json.loads(user().read_text())
    cfg = parse_config(raw, code_dir=user.folder)
    assert cfg.model.fingerprint == load_config(user()).model.fingerprint


# --- bad input: a clear error naming the field, before any compute, nothing in the store ------

def _bad(user):
    m = user.module
    net = {"factory": f"{m}:make_net", "kwargs": {"num_classes": 3}}
    return {
        "module does not import": (dict(model={"factory": "no_such_module_x:make"}),
                                   ["model.factory='no_such_module_x:make'", "no module named"]),
        "attribute missing": (dict(model={"factory": f"{m}:make_nett"}),
                              ["model.factory=", "has no attribute 'make_nett'"]),
        "not a path": (dict(model={"factory": "make_net"}), ["model.factory='make_net'",
                                                             "'module:function'"]),
        "not a module": (dict(model={"factory": f"{m}:not_a_module"}),
                         ["model.factory=", "returned a dict, not a torch.nn.Module"]),
        "kwargs not accepted": (dict(model={"factory": f"{m}:make_net", "kwargs": {"depth": 3}}),
                                ["model.kwargs={'depth': 3}", "does not accept",
                                 "accepts: hidden, num_classes, stride"]),
        "wrong logits": (dict(model={"factory": f"{m}:make_net", "kwargs": {"num_classes": 4}}),
                         ["model.factory=", "[2, 4]", "one logit per class", "[2, 3]"]),
        "width with a factory": (dict(model={**net, "width": 2}), ["model.width=2.0", "kwargs"]),
        "lengths differ": (dict(model=net, data={"factory": f"{m}:short_labels"}),
                           ["data.factory=", "train: 20 inputs but 19 labels"]),
        "labels outside": (dict(model=net, data={"factory": f"{m}:big_labels"}),
                           ["data.factory=", "label 3 is outside 0..2"]),
        "no test set": (dict(model=net, data={"factory": f"{m}:no_test"}),
                        ["data.factory=", "returned no 'test'"]),
        "data kwargs not accepted": (dict(model=net, data={"factory": f"{m}:load",
                                                           "kwargs": {"size": 3}}),
                                     ["data.kwargs={'size': 3}", "does not accept"]),
        "data module missing": (dict(data={"factory": "nowhere_y.data:load"}),
                                ["data.factory='nowhere_y.data:load'",
                                 "no module named 'nowhere_y'"]),
    }


BAD_IDS = ["module does not import", "attribute missing", "not a path", "not a module",
           "kwargs not accepted", "wrong logits", "width with a factory", "lengths differ",
           "labels outside", "no test set", "data kwargs not accepted", "data module missing"]


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_factories_are_rejected_before_any_compute(case, user, tracking_uri, tmp_path, capsys):
    sections, fragments = _bad(user)[case]
    path = user(**sections)
    assert main(["grid", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "mlflow.db").exists()          # not even the store was touched


def test_bad_ids_cover_every_case(user):
    assert sorted(_bad(user)) == sorted(BAD_IDS)


def test_data_that_changed_since_the_config_was_loaded_is_refused(user):
    cfg = load_config(user())
    stale = cfg.data.replace(fingerprint="0" * 16)
    with pytest.raises(ValueError, match="now returns different data"):
        load_dataset(stale)
    model = cfg.model.replace(fingerprint="0" * 16)
    from pipeline.models import build_model

    with pytest.raises(ValueError, match="now builds a different module"):
        build_model(model, (1, 8), 3)


def test_readme_example_files_are_the_ones_documented():
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    blocks = _code_blocks(section)
    code = blocks["python"]
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    compile(code, "mynet.py", "exec")
    assert "factory: mynet:make_data" in blocks["yaml"] or '"mynet:make_data"' in blocks["yaml"]


def _code_blocks(text: str) -> dict[str, str]:
    out = {}
    parts = text.split("```")
    for i in range(1, len(parts), 2):
        lang, _, body = parts[i].partition("\n")
        out.setdefault(lang.strip(), textwrap.dedent(body))
    return out


@pytest.mark.parametrize("name", ["mnist1d", "digits"])
def test_builtin_input_shapes_match_the_loaded_datasets(name):
    ds = load_dataset(DataSpec(name=name))
    assert factories.BUILTIN_INPUTS[name] == (ds.input_shape, ds.num_classes)


def test_an_augment_without_a_generator_trains_reproducibly(user):
    from pipeline.models import build_model
    from pipeline.specs import TrainSpec
    from pipeline.train import train

    code = (user.folder / f"{user.module}.py").read_text() + textwrap.dedent('''

        def load_aug(n=60):
            out = load(n)
            out["augment"] = lambda x: x + 0.5 * torch.randn_like(x)   # the global generator
            return out
    ''')
    (user.folder / f"{user.module}.py").write_text(code)
    plain = load_config(user())
    augmented = load_config(user(data={"factory": f"{user.module}:load_aug"}))
    spec = TrainSpec(epochs=1, batch_size=16, lr=0.05)

    def run(cfg):
        ds = load_dataset(cfg.data)
        model = build_model(cfg.model, ds.input_shape, ds.num_classes, members=2, seed=0)
        return train(model, ds, spec, [0, 1]).state_dict()["0.weight"]

    a = run(augmented)
    assert torch.equal(a, run(augmented))                 # seeded from each copy's generator
    assert not torch.allclose(a, run(plain))              # and the augmentation was applied
