"""The config schema: every key of every option is declared, bad values are refused before a
run folder exists, components are named by `_target_` alone, and configs saved before that
change (with `name:` keys, datasets without `_target_`) still resume and evaluate."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from conftest import IMAGE_KEYS, QUICK, REPO, read_json, run_mlprun
from mlprunner import schema
from mlprunner.components import Loss, build_scheduler, class_node, steps_on_metric
from mlprunner.config import validate
from mlprunner.data import load_data
from mlprunner.errors import ConfigError

CONFIGS = REPO / "configs"


def every_option() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in schema.GROUPS for p in sorted((CONFIGS / g).glob("*.yaml"))]


def keys_of(cfg: DictConfig) -> list[str]:
    """Every dotted key below the groups: leaves and the nodes of keys inside a group."""
    out = []

    def walk(node: DictConfig, prefix: str, depth: int) -> None:
        for key in node.keys():
            full = f"{prefix}{key}"
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                if depth:
                    out.append(full)
                walk(child, full + ".", depth + 1)
            else:
                out.append(full)

    walk(cfg, "", 0)
    return out


def undeclared(cfg: DictConfig) -> list[str]:
    return [k for k in keys_of(cfg) if not schema.declared(k)]


def test_groups_come_from_the_configs_folder():
    folders = {p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")}
    assert set(schema.GROUPS) == folders
    assert schema.GROUPS[:5] == ("dataset", "model", "optim", "scheduler", "loss")
    assert "experiment" in schema.GROUPS and "experiment" not in schema.REQUIRED_GROUPS


@pytest.mark.parametrize("group, option", every_option())
def test_every_key_of_every_option_is_in_the_schema(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}", *IMAGE_KEYS.get(option, []))
    assert keys_of(cfg), "nothing composed"
    assert undeclared(cfg) == [], f"{group}={option}: keys missing from schema.SCHEMA"


def test_a_key_missing_from_the_schema_is_found(compose_cfg, monkeypatch):
    cfg = compose_cfg("optim=sgd_momentum")
    assert undeclared(cfg) == []
    monkeypatch.delitem(schema.SCHEMA, "optim.nesterov")
    assert undeclared(cfg) == ["optim.nesterov"]


def test_no_component_is_named_twice():
    """`_target_` is the only name of a scheduler or loss; a dataset's `name` is a label."""
    for group in ("scheduler", "loss"):
        for option, node in schema.options(group).items():
            assert "name" not in node, f"{group}/{option}.yaml"
            assert "_target_" in node or (group, option) == ("scheduler", "none")
    for option, node in schema.options("dataset").items():
        assert node["_target_"] == f"mlprunner.data.load_{option}" and node["name"] == option


def test_keys_left_out_of_folder_names_are_those_left_out_of_hparams():
    """Two lists say "this key does not change a job's result": Hydra's exclude_keys (sweep
    folder names) and sessions.NOT_HPARAMS (HParams, MLflow params). Every key of the schema is
    in both or in neither (logger.csv.filename named a folder and was no hyper-parameter)."""
    from mlprunner.sessions import NOT_HPARAMS

    excluded = set(OmegaConf.load(REPO / "configs" / "config.yaml").hydra.job.config.override_dirname.exclude_keys)
    keys = [k for k in schema.SCHEMA if k != "resume"]  # resume= is no sweep override
    assert [k for k in keys if bool(NOT_HPARAMS.match(k)) != (k in excluded)] == []


def test_allowed_lists_come_from_the_schema(compose_cfg):
    cfg = compose_cfg("dataset=digits", "model.activation=swish")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.allowed == ", ".join(schema.ACTIVATIONS)
    from mlprunner.models import ACTIVATIONS

    assert list(ACTIVATIONS) == list(schema.ACTIVATIONS)


@pytest.mark.parametrize(
    "value, ok", [("auto", True), (True, True), (False, True), ("maybe", False), (1, False), ("true", False)]
)
def test_trainer_cuda_graph(compose_cfg, value, ok):
    cfg = compose_cfg("dataset=digits")
    OmegaConf.set_struct(cfg, False)
    cfg.trainer.cuda_graph = value
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match="trainer.cuda_graph.*allowed: auto, true, false"):
            validate(cfg)


@pytest.mark.parametrize(
    "override, key",
    [
        ("scheduler.pct_start=1.5", "scheduler.pct_start"),
        ("scheduler.anneal_strategy=cubic", "scheduler.anneal_strategy"),
        ("scheduler.interval=batch", "scheduler.interval"),
    ],
)
def test_scheduler_class_arguments_are_checked(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_cfg("dataset=digits", "scheduler=onecycle", override))


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "dataset._target_=mlprunner.data.load_nothing",
            "dataset._target_='mlprunner.data.load_nothing' is invalid; "
            "allowed: a dataset loader: mlprunner.data.load_digits",
        ),
        ("dataset._target_=os.system", "dataset._target_='os.system' is invalid"),
        ("loss._target_=torch.nn.NoSuchLoss", "loss._target_='torch.nn.NoSuchLoss': "),
        ("optim._target_=torch.optim.Adamm", "optim._target_='torch.optim.Adamm': "),
    ],
)
def test_bad_targets_are_one_line_config_errors(compose_cfg, override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("dataset=digits", override))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_mlprun_keys_are_not_passed_to_the_class(compose_cfg):
    sched = compose_cfg("scheduler=cosine", "scheduler.warmup_epochs=1").scheduler
    assert set(class_node(sched, "scheduler")) == {"_target_", "_partial_", "T_max", "eta_min"}
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    plateau, _ = build_scheduler(compose_cfg("scheduler=plateau").scheduler, opt, 5, 3)
    assert steps_on_metric(plateau)
    cosine, _ = build_scheduler(sched, opt, 5, 3)
    assert not steps_on_metric(cosine)


# --------------------------------------------------------------------------- refused early, for real

BAD = [
    (["trainer.swa.enabled=true", "trainer.swa.lr=-1"], "trainer.swa.lr"),
    (["trainer.swa.anneal_epochs=-1"], "trainer.swa.anneal_epochs"),
    (["trainer.swa.enabled=true", "trainer.epochs=4", "trainer.swa.start_epoch=9"], "trainer.swa.start_epoch"),
    (["trainer.swa.start_epoch=-0.5"], "trainer.swa.start_epoch"),
    (["trainer.swa.enabled=maybe"], "trainer.swa.enabled"),
    (["dataset=digits", "dataset.augment.enabled=true", "dataset.augment.max_scale=1.5"], "dataset.augment.max_scale"),
    (["dataset=digits", "dataset.augment.max_shift=-2"], "dataset.augment.max_shift"),
    (["dataset=digits", "dataset.augment.max_rotate=fast"], "dataset.augment.max_rotate"),
    (["dataset=xor", "+dataset.augment.enabled=true"], "dataset.augment.enabled"),
]


@pytest.mark.parametrize("args, key", BAD, ids=[key + f"-{i}" for i, (_, key) in enumerate(BAD)])
def test_bad_swa_and_augment_values_are_refused_before_a_run_folder(tmp_path, args, key):
    proc = run_mlprun(*args, *QUICK, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mlprun: error: {key}"), proc.stderr
    assert "allowed" in lines[0] and "Traceback" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []  # no runs/ folder, no log file


# --------------------------------------------------------------------------- configs saved before


def old_style(config: dict, scheduler: str, loss: str) -> dict:
    """A config as mlprun saved it before `_target_` was the only name of a component."""
    config = {
        **config,
        "scheduler": {"name": scheduler, **config["scheduler"]},
        "loss": {"name": loss, **config["loss"]},
        "dataset": dict(config["dataset"]),
    }
    del config["dataset"]["_target_"]
    return config


def test_old_config_keys_are_accepted_and_ignored(compose_cfg):
    new = OmegaConf.to_container(compose_cfg("experiment=xor_seed", "scheduler=step"), resolve=True)
    cfg = OmegaConf.create(old_style(new, "step", "bce_with_logits"))
    validate(cfg)
    assert schema.option_label(cfg.scheduler, "scheduler") == "step"
    assert "name" not in class_node(cfg.scheduler, "scheduler") and "name" not in class_node(cfg.loss, "loss")
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    sched, interval = build_scheduler(cfg.scheduler, opt, 10, 4)
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and interval == "epoch"
    loss = Loss(cfg.loss, 2)
    assert loss.binary and loss.out_features == 1
    data = load_data(cfg.dataset, "cpu")
    assert data.num_classes == 2 and len(data.train) == cfg.dataset.n_train
    # scheduler=none was `{name: none}`: still a constant learning rate
    none = OmegaConf.create({**old_style(new, "none", "bce_with_logits"), "scheduler": {"name": "none"}})
    validate(none)
    assert build_scheduler(none.scheduler, opt, 10, 4) == (None, "epoch")


def test_run_saved_before_resumes_and_evaluates(tmp_path):
    from mlprunner.evaluate import evaluate_saved

    run_dir = tmp_path / "old"
    tiny = [
        "dataset=xor",
        "model=mlp",
        "model.hidden=[4]",
        "loss=bce_with_logits",
        "scheduler=step",
        "scheduler.step_size=1",
        *QUICK,
        "trainer.tensorboard.enabled=false",
    ]
    run_mlprun(*tiny, "trainer.epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True)
    # rewrite what the run saved into the form of a run made before this change
    for name in ("last.pt", "best.pt"):
        path = run_dir / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        state["config"] = old_style(state["config"], "step", "bce_with_logits")
        torch.save(state, path)
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    saved = yaml.safe_load(hydra_cfg.read_text())
    hydra_cfg.write_text(yaml.safe_dump(old_style(saved, "step", "bce_with_logits")))

    loaded, metrics, _ = evaluate_saved(str(run_dir), "last", device="cpu")
    assert loaded.loss.binary and metrics["epoch"] == 2 and 0 <= metrics["error"] <= 1

    proc = run_mlprun(f"resume={run_dir}", "trainer.epochs=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = read_json(run_dir / "results.json")
    assert res["status"] == "completed" and res["epochs_completed"] == 3

    # killed before its first checkpoint: restarted from the old .hydra/config.yaml
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "results.json").unlink()
    proc = run_mlprun(f"resume={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert read_json(run_dir / "results.json")["epochs_completed"] == 2
