"""Real Hydra composition of every option of every config group, and the pieces built from them."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import IMAGE_KEYS, REPO, run_mlprun
from mlprunner.components import Loss, build_optimizer, build_scheduler, lr_note
from mlprunner.config import validate
from mlprunner.errors import ConfigError
from mlprunner.models import MLP, count_parameters
from mlprunner.schema import option_label

CONFIGS = REPO / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_every_group_has_the_required_options():
    assert set(options("dataset")) >= {"mnist", "fashion_mnist", "digits", "xor", "image_csv", "image_folder"}
    assert set(options("model")) >= {"mlp_500_300", "mlp_800", "mlp_300_100", "mlp_100", "linear"}
    assert set(options("optim")) >= {
        "sgd",
        "sgd_momentum",
        "adam",
        "adamw",
        "adagrad",
        "adadelta",
        "rmsprop",
        "nadam",
        "radam",
        "adamax",
        "asgd",
    }
    assert set(options("scheduler")) >= {"none", "step", "multistep", "exponential", "cosine", "plateau", "onecycle"}
    assert set(options("loss")) >= {"cross_entropy", "nll", "bce_with_logits", "mse", "l1", "multi_margin"}
    assert set(options("experiment")) >= {"mnist_seed", "xor_seed"}


def test_defaults(compose_cfg, monkeypatch):
    monkeypatch.delenv("MLPRUN_DATA", raising=False)
    cfg = compose_cfg()
    validate(cfg)
    assert cfg.dataset.name == "mnist"
    assert cfg.dataset.val_fraction == 0.1
    assert cfg.dataset.download is True
    assert cfg.dataset.root == "./data"
    assert list(cfg.model.hidden) == [500, 300]
    assert cfg.model._target_ == "mlprunner.models.MLP"
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.optim.lr == 1e-3 and cfg.optim._partial_
    assert option_label(cfg.scheduler, "scheduler") == "none" and "_target_" not in cfg.scheduler
    assert cfg.loss._target_ == "torch.nn.CrossEntropyLoss"
    t = cfg.trainer
    assert (t.epochs, t.batch_size, t.device) == (20, 100, "auto")
    assert t.early_stopping.enabled is False and t.early_stopping.monitor == "val/error"
    assert t.checkpoint.save_last and t.checkpoint.save_best


def test_dataset_root_follows_mlprun_data(compose_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("MLPRUN_DATA", str(tmp_path))
    assert compose_cfg("dataset=fashion_mnist").dataset.root == str(tmp_path)


@pytest.mark.parametrize("name", options("dataset"))
def test_dataset_option(compose_cfg, name):
    cfg = compose_cfg(f"dataset={name}", *IMAGE_KEYS.get(name, []))
    validate(cfg)
    d = cfg.dataset
    assert d.name == name and d._target_ == f"mlprunner.data.load_{name}"
    assert "root" in d
    if name in ("mnist", "fashion_mnist"):
        assert d.val_fraction == 0.1 and d.download is True and len(d.mean) == len(d.std) == 1
    elif name == "xor":
        assert d.noise == 0.1 and d.n_train > 0 and d.n_val > 0
    elif name == "digits":
        assert 0 < d.test_fraction < 1
    elif name == "image_csv":
        assert d.csv == "/tmp/x/labels.csv" and d.image_dir is None
    elif name == "image_folder":
        assert d.image_dir == "/tmp/x"


@pytest.mark.parametrize("name", ["image_csv", "image_folder"])
def test_image_datasets_need_their_path(compose_cfg, name):
    cfg = compose_cfg(f"dataset={name}")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "dataset." in str(err.value)


@pytest.mark.parametrize("name", options("model"))
def test_model_option(compose_cfg, name):
    cfg = compose_cfg(f"model={name}", "dataset=digits")
    validate(cfg)
    expected = {"mlp_500_300": [500, 300], "mlp_800": [800], "mlp_300_100": [300, 100], "mlp_100": [100], "linear": []}
    if name in expected:
        assert list(cfg.model.hidden) == expected[name]
    model = MLP(
        in_features=64,
        out_features=10,
        **{k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "_target_"},
    )
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == list(cfg.model.hidden) + [10]
    widths = [64, *cfg.model.hidden, 10]
    assert count_parameters(model) == sum(a * b + b for a, b in zip(widths, widths[1:]))
    assert model(torch.randn(3, 64)).shape == (3, 10)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu", "elu", "gelu", "silu"])
def test_model_activation_dropout_batchnorm(compose_cfg, activation):
    cfg = compose_cfg(
        "model=mlp_100", f"model.activation={activation}", "model.dropout=0.2", "model.batchnorm=true", "dataset=digits"
    )
    validate(cfg)
    from hydra.utils import instantiate

    model = instantiate(cfg.model, in_features=64, out_features=10)
    kinds = [type(m).__name__ for m in model]
    assert "BatchNorm1d" in kinds and "Dropout" in kinds
    assert model(torch.randn(4, 64)).shape == (4, 10)


@pytest.mark.parametrize("name", options("optim"))
def test_optim_option(compose_cfg, name):
    cfg = compose_cfg(f"optim={name}", "dataset=digits")
    validate(cfg)
    assert cfg.optim._target_.startswith("torch.optim.") and cfg.optim._partial_ is True
    model = MLP(8, 3, hidden=[5])
    opt = build_optimizer(cfg.optim, model, torch.device("cpu"))
    assert type(opt).__name__ == cfg.optim._target_.rsplit(".", 1)[-1]
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr)
    if name == "sgd_momentum":
        assert opt.param_groups[0]["momentum"] == 0.9 and "nesterov" in cfg.optim
    if name == "adam":
        assert cfg.optim.lr == 1e-3
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 8)), torch.randint(0, 3, (16,)))
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_sgd_nesterov_option(compose_cfg):
    cfg = compose_cfg("optim=sgd_momentum", "optim.nesterov=true", "dataset=digits")
    opt = build_optimizer(cfg.optim, MLP(4, 2, hidden=[3]), torch.device("cpu"))
    assert opt.param_groups[0]["nesterov"] is True


@pytest.mark.parametrize(
    "given, fused, foreach",
    [((), True, None), (("+optim.foreach=false",), None, False), (("+optim.fused=false",), False, None)],
)
def test_the_optimizer_implementation_a_user_names_is_the_one_built(compose_cfg, given, fused, foreach):
    """Adam is fused on the CPU unless the user names an implementation: +optim.foreach=false (the
    for-loop the lecture compares) used to come out fused as well."""
    cfg = compose_cfg("optim=adam", "dataset=digits", *given)
    group = build_optimizer(cfg.optim, MLP(4, 2, hidden=[3]), torch.device("cpu")).param_groups[0]
    assert (group["fused"], group["foreach"]) == (fused, foreach)


@pytest.mark.parametrize("name", options("scheduler"))
def test_scheduler_option(compose_cfg, name):
    cfg = compose_cfg(f"scheduler={name}", "dataset=digits", "trainer.epochs=20")
    validate(cfg)
    assert option_label(cfg.scheduler, "scheduler") == name and "name" not in cfg.scheduler
    model = MLP(4, 2, hidden=[3])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched, interval = build_scheduler(cfg.scheduler, opt, epochs=20, steps_per_epoch=5)
    if name == "none":
        assert sched is None
        return
    assert interval == cfg.scheduler.interval
    lr0 = opt.param_groups[0]["lr"]
    steps = 5 if interval == "step" else 1
    for _ in range(steps):
        opt.step()
        if name == "plateau":
            sched.step(1.0)
        else:
            sched.step()
    lr1 = opt.param_groups[0]["lr"]
    assert lr1 > 0 and torch.isfinite(torch.tensor(lr1))
    if name in ("exponential", "cosine", "onecycle"):
        assert lr1 != lr0  # these change the lr from the first step


@pytest.mark.parametrize("name", ["step", "cosine", "onecycle", "exponential"])
def test_scheduler_warmup(compose_cfg, name):
    cfg = compose_cfg(f"scheduler={name}", "scheduler.warmup_epochs=2", "dataset=digits", "trainer.epochs=6")
    validate(cfg)
    opt = torch.optim.SGD(MLP(4, 2, hidden=[3]).parameters(), lr=0.1)
    sched, interval = build_scheduler(cfg.scheduler, opt, epochs=6, steps_per_epoch=4)
    units = 4 if interval == "step" else 1
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(6 * units):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    start = cfg.scheduler.warmup_start_factor * (cfg.scheduler.max_lr if name == "onecycle" else 0.1)
    if name != "onecycle":
        assert lrs[0] == pytest.approx(start)
        # linear ramp up during the warm-up
        assert all(b > a for a, b in zip(lrs[: 2 * units], lrs[1 : 2 * units + 1]))
        assert lrs[2 * units] == pytest.approx(0.1)
    # every lr used by a training epoch/step is positive (cosine reaches eta_min=0 only after the last)
    assert all(lr > 0 for lr in lrs[:-1]) and lrs[-1] >= 0


def test_plateau_with_warmup_is_a_config_error(compose_cfg):
    cfg = compose_cfg("scheduler=plateau", "scheduler.warmup_epochs=1", "dataset=digits")
    with pytest.raises(ConfigError, match="scheduler.warmup_epochs"):
        validate(cfg)


@pytest.mark.parametrize("name", options("loss"))
def test_loss_option(compose_cfg, name):
    overrides = [f"loss={name}", "dataset=xor" if name == "bce_with_logits" else "dataset=digits"]
    cfg = compose_cfg(*overrides)
    validate(cfg)
    assert option_label(cfg.loss, "loss") == name and "name" not in cfg.loss
    classes = 2 if name == "bce_with_logits" else 10
    loss = Loss(cfg.loss, classes)
    assert loss.out_features == (1 if name == "bce_with_logits" else classes)
    model = MLP(6, loss.out_features, hidden=[8])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6), torch.randint(0, classes, (32,))
    value = loss(model(x), y)
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    value.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    preds = loss.predict(model(x))
    assert preds.shape == (32,) and preds.dtype == torch.long
    assert int(preds.min()) >= 0 and int(preds.max()) < classes
    probs = loss.probs(model(x))
    assert probs.shape == (32, classes)
    assert torch.allclose(probs.sum(1), torch.ones(32), atol=1e-5)


def test_cross_entropy_label_smoothing(compose_cfg):
    cfg = compose_cfg("loss=cross_entropy", "loss.label_smoothing=0.1", "dataset=digits")
    validate(cfg)
    assert Loss(cfg.loss, 10).fn.label_smoothing == pytest.approx(0.1)


def test_bce_on_ten_classes_is_a_config_error(compose_cfg):
    from mlprunner.config import check_loss_fits

    bce = compose_cfg("loss=bce_with_logits", "dataset=xor").loss
    check_loss_fits(bce, 2)
    with pytest.raises(ConfigError, match="bce_with_logits"):
        check_loss_fits(bce, 10)


def test_experiment_xor_seed(compose_cfg):
    cfg = compose_cfg("experiment=xor_seed")
    validate(cfg)
    assert cfg.dataset.name == "xor"
    assert list(cfg.model.hidden) == [4] and cfg.model.activation == "tanh"
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.lr == 0.1
    assert cfg.loss._target_ == "torch.nn.BCEWithLogitsLoss"
    assert cfg.trainer.batch_size == 128


def test_experiment_mnist_seed(compose_cfg):
    cfg = compose_cfg("experiment=mnist_seed")
    validate(cfg)
    assert cfg.dataset.name == "mnist" and cfg.dataset.val_fraction == 0.1
    assert cfg.dataset.normalize is False
    assert list(cfg.model.hidden) == [500, 300] and cfg.model.activation == "relu"
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.optim.lr == 1e-3
    assert cfg.loss._target_ == "torch.nn.CrossEntropyLoss" and option_label(cfg.scheduler, "scheduler") == "none"
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (20, 100)


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_validates(compose_cfg, name):
    validate(compose_cfg(f"experiment={name}"))


def test_experiment_can_be_overridden_on_the_command_line(compose_cfg):
    cfg = compose_cfg("experiment=xor_seed", "optim.lr=0.5", "trainer.epochs=3")
    assert cfg.optim.lr == 0.5 and cfg.trainer.epochs == 3


def test_overrides_land(compose_cfg):
    cfg = compose_cfg("optim.lr=3e-4", "model.hidden=[800]", "trainer.epochs=5")
    validate(cfg)
    assert cfg.optim.lr == 3e-4
    assert list(cfg.model.hidden) == [800]
    assert cfg.trainer.epochs == 5


@pytest.mark.parametrize(
    "override,key",
    [
        ("optim.lr=-1", "optim.lr"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("model.activation=swish", "model.activation"),
        ("model.hidden=[0]", "model.hidden"),
        ("dataset.val_fraction=1.5", "dataset.val_fraction"),
        ("trainer.device=tpu", "trainer.device"),
    ],
)
def test_invalid_values_name_their_key(compose_cfg, override, key):
    cfg = compose_cfg("dataset=digits", override)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert key in str(err.value) and "allowed" in str(err.value)


# ------------------------------------------------------------------------------- the CLI


def test_cli_help(tmp_path):
    """Usage, examples and every group's options (launcher and sweeper plugins too), within the
    terminal's 80 columns."""
    proc = run_mlprun("--help", cwd=tmp_path, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    for group in ("dataset", "model", "optim", "scheduler", "loss", "experiment", "hydra/launcher"):
        assert f"  {group}: " in proc.stdout
    assert "mlp_500_300" in proc.stdout and "fashion_mnist" in proc.stdout and "sgd_momentum" in proc.stdout
    assert "mlprun resume=" in proc.stdout and "mlprun-report" in proc.stdout and "joblib" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80, proc.stdout


def test_cli_cfg_job(tmp_path):
    proc = run_mlprun(
        "--cfg", "job", "dataset=digits", "optim.lr=3e-4", "model.hidden=[800]", "trainer.epochs=5", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.dataset.name == "digits"
    assert cfg.optim.lr == 3e-4 and list(cfg.model.hidden) == [800] and cfg.trainer.epochs == 5
    assert "hydra" not in cfg
    assert not (tmp_path / "runs").exists()  # --cfg composes only, it does not run


def test_cli_info(tmp_path):
    proc = run_mlprun("--info", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "mlprunner.configs" in proc.stdout or "pkg://" in proc.stdout


def test_cli_unknown_option_is_exit_2(tmp_path):
    proc = run_mlprun("model=nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert "model" in proc.stderr and "Traceback" not in proc.stderr


def test_onecycle_says_that_it_sets_the_lr_itself(compose_cfg):
    """OneCycleLR ignores optim.lr (it starts from max_lr / div_factor): the log says so."""
    cfg = compose_cfg("scheduler=onecycle", "optim.lr=1e-5", "scheduler.max_lr=0.02")
    assert lr_note(cfg.scheduler) == (
        "OneCycleLR: the lr rises to scheduler.max_lr=0.02 and falls; optim.lr is not used"
    )
    assert lr_note(compose_cfg("scheduler=cosine").scheduler) is None
    assert lr_note(compose_cfg("scheduler=none").scheduler) is None
