"""The console tools, on top of everything else: `mlprun` (a thin @hydra.main around
`run.run()`; `resume=` and multirun jobs), `mlprun-eval`, `mlprun-predict` and `mlprun-report`.

Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or arguments,
130 interrupted. Tracebacks only with MLPRUN_DEBUG=1 (or HYDRA_FULL_ERROR=1 set by the user).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import os
import shlex
import shutil
import sys
import textwrap
from importlib import resources
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from .checkpoint import atomic_write_json, atomic_write_text
from .config import launch_relative_paths, register_resolvers
from .errors import (
    EXIT_CONFIG,
    EXIT_OK,
    ConfigError,
    Interrupted,
    MlprunError,
    SweepFailed,
    SweepStopped,
    WriteError,
)
from .evaluate import (
    CHECKPOINTS,
    EVAL_OVERRIDES,
    SPLITS,
    evaluate_saved,
    load_run,
    public_metrics,
    report_line,
    write_figures,
)
from .messages import describe_exception, holds_null, one_line_errors, report, suggest_key
from .predict import find_images, predict, prepare
from .progress import item_lines
from .provenance import note_command, version_line
from .record import interrupted_outside_record
from .report import build_report
from .resume import resume_main
from .run import install_startup_signals, run
from .runs import check_output
from .sweep import (
    forget_launch_marks,
    forget_refused_run,
    forget_refused_sweeps,
    hydra_files,
    no_trial_completed,
    restore_kept_multirun_yaml,
    run_sweep_job,
    started_sweep,
    sweep_stop_reason,
)

log = logging.getLogger("mlprunner")


PRIMARY_FLAGS = ("--config-path", "-cp", "--config-name", "-cn")


def mlprun_hydra() -> list[str]:
    """configs/config.yaml's `hydra:` node (logging, run and sweep folders, callbacks) as
    command-line overrides.

    With --config-path/--config-name the primary config is the user's (e.g. a run's saved
    `.hydra/config.yaml`), which has no `hydra:` node of mlprun's: these put back mlprun's
    console lines and <run>/mlprun.log, its run folders under runs/ and its callbacks (the
    checks before a run folder is made, the sweep summary)."""
    primary = OmegaConf.create(resources.files("mlprunner.configs").joinpath("config.yaml").read_text())
    out = ["hydra.searchpath=[pkg://mlprunner.configs]"]
    for entry in primary.defaults:
        for key, option in entry.items() if isinstance(entry, DictConfig) else []:
            if key.startswith("override hydra/"):
                out.append(f"{key.removeprefix('override ')}={option}")

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            if isinstance(node._get_node(key), DictConfig):
                walk(node._get_node(key), f"{prefix}{key}.")
                continue
            value = node._get_node(key)._value()
            if isinstance(value, (list, ListConfig)):
                value = "[" + ",".join(str(v) for v in value) + "]"
            out.append(f"++{prefix}{key}={str(value).lower() if isinstance(value, bool) else value}")

    walk(primary.hydra, "hydra.")
    return out


def with_mlprun_hydra(args: list[str]) -> list[str]:
    """`args` plus mlprun_hydra()'s overrides when they choose another primary config; the
    user's own values for those keys win."""
    if not any(a.partition("=")[0] in PRIMARY_FLAGS for a in args):
        return args
    args = from_here(args)
    given = {a.lstrip("+~").partition("=")[0] for a in args}
    return [*args, *(o for o in mlprun_hydra() if o.lstrip("+").partition("=")[0] not in given)]


def multirun_flag_first(args: list[str]) -> list[str]:
    """`mlprun a=1 -m b=1,2`: Hydra's argparse takes no flag after an override (it prints its usage
    and "unrecognized arguments"); -m/--multirun anywhere means a sweep, so it goes first."""
    flags = [a for a in args if a in ("-m", "--multirun")]
    return [*flags, *(a for a in args if a not in ("-m", "--multirun"))] if flags else args


def rerun_command(sweep_dir: str) -> str:
    """This process's `mlprun` command line, into this sweep's folder (its default name holds the
    time it started, so a rerun names it)."""
    added = set(mlprun_hydra())  # what with_mlprun_hydra added to the user's arguments
    args = [a for a in sys.argv[1:] if a not in added and not a.startswith("hydra.sweep.dir=")]
    return shlex.join(["mlprun", *args, f"hydra.sweep.dir={Path(sweep_dir).resolve()}"])


def sweep_stopped(reason: str, sweep_dir: str) -> Interrupted:
    """A signal stopped the sweep (exit 130): the rest of it waits for the same command."""
    return Interrupted(
        f"{reason}; continue the sweep (completed jobs are skipped, the others resume from "
        f"their checkpoints/last.pt) with: {rerun_command(sweep_dir)}"
    )


def from_here(args: list[str]) -> list[str]:
    """A relative --config-path/-cp names a folder under the current directory (Hydra would look
    for it beside mlprun's own module: "Primary config module 'mlprunner.runs...' not found")."""
    out = list(args)
    for i, a in enumerate(out):
        flag, eq, value = a.partition("=")
        if flag not in ("--config-path", "-cp"):
            continue
        j = i if eq else i + 1
        value = value if eq else (out[j] if j < len(out) else "")
        if value and "://" not in value and not Path(value).expanduser().is_absolute():
            value = str(Path(value).expanduser().resolve())
            out[j] = f"{flag}={value}" if eq else value
    return out


@hydra.main(version_base="1.3", config_path="pkg://mlprunner.configs", config_name="config")
def hydra_app(cfg: DictConfig):
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    saved = hydra_files(cfg) if hc.mode == RunMode.MULTIRUN else None  # as composed, before any change
    if hc.job.chdir:
        launch_relative_paths(cfg, Path(hc.runtime.cwd))
    if hc.mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg, run_dir, overrides, saved)
    grid = list(hc.sweeper.get("params") or {})
    if grid:  # a sweep preset (experiment=mnist_exercise2) without -m: Hydra runs one job, silently
        preset = hc.runtime.choices.get("experiment")
        given = f"experiment={preset}" if preset else "hydra.sweeper.params"
        log.warning(
            f"{given} defines a sweep over {', '.join(grid)}; without -m this is one job with the "
            f"preset's other settings: add -m to run the sweep"
        )
    try:
        results = run(cfg, run_dir, overrides=overrides)
    except BaseException as exc:  # single run: report in one line and exit with its code
        if describe_exception(exc)[0] == EXIT_CONFIG:
            forget_refused_run(run_dir)
        sys.exit(report(interrupted_outside_record(run_dir, overrides, exc)))
    best = (results.get("best") or {}).get("val") or {}
    return best.get("error")


HELP = """\
usage: mlprun [group=option ...] [key=value ...]   one run
       mlprun -m key=a,b [key=c,d ...]              a sweep: every combination
       mlprun resume=<run folder|latest> [key=...]  continue a run

examples:
  mlprun model=mlp_500_300 optim=adam
  mlprun dataset=digits trainer.epochs=5
  mlprun -m optim=sgd,adam model.activation=relu,tanh
  mlprun -m hydra/launcher=stacked optim.lr=0.001,0.003 trainer.seed=0,1,2
  mlprun -m experiment=mnist_exercise2"""

HELP_END = """\
every key with its value: mlprun --cfg job [overrides]
Hydra's own flags: mlprun --hydra-help
other commands (each with --help): mlprun-eval, mlprun-predict, mlprun-report"""


def help_text(width: int) -> str:
    """`mlprun --help`: usage, examples, every config group with its options (as Hydra's config
    loader lists them, launcher and sweeper plugins included), folded to `width` columns."""
    with hydra.initialize_config_module(config_module="mlprunner.configs", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = [g for g in loader.list_groups("") if g != "hydra"] + ["hydra/launcher", "hydra/sweeper"]
        lines = [HELP, "", "config groups (group=option):"]
        for group in groups:
            options = ", ".join(loader.get_group_options(group))
            lines.append(textwrap.fill(options, width, initial_indent=f"  {group}: ", subsequent_indent="    "))
    return "\n".join([*lines, "", HELP_END])


def main(argv: list[str] | None = None, early_signals: list[str] | None = None) -> None:
    """Console entry point of `mlprun` (through __main__, which notes in `early_signals` a signal
    that came while torch was imported)."""
    install_startup_signals(early_signals)  # see README, What mlprun guarantees
    register_resolvers()
    # Let Hydra's own errors reach us as exceptions, so we can print them in one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        # Optuna's log handler colours its lines whatever the stream (colorlog with no stream to
        # ask); NO_COLOR (no-color.org, which colorlog and rich follow) keeps escape codes out of
        # a pipe or a file, in the sweep's worker processes too. FORCE_COLOR still wins.
        os.environ.setdefault("NO_COLOR", "1")
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    note_command()  # as typed, for provenance, also in a sweep's workers and SLURM jobs
    args = sys.argv[1:]
    if args in (["--version"], ["-V"]):  # Hydra's own --version would name Hydra's
        print(version_line())
        sys.exit(EXIT_OK)
    if args in (["--help"], ["-h"]):  # Hydra's help prints the whole config in lines of 117 columns
        print(help_text(min(shutil.get_terminal_size().columns, 100)))
        sys.exit(EXIT_OK)
    try:
        resume = [a for a in args if a.startswith("resume=") and a != "resume=null"]
        if resume:
            sys.exit(resume_main(args))
        sys.argv = [sys.argv[0], *with_mlprun_hydra(multirun_flag_first(args))]
        check_flags(sys.argv[1:])
        try:
            package = printed_package(args)
            if package:
                print_package(package)
            else:
                hydra_app()
        except BaseException as exc:
            if describe_exception(exc)[0] == EXIT_CONFIG:  # refused: the sweep folder is as it was
                forget_refused_sweeps()
            if isinstance(exc, KeyboardInterrupt) and sweep_stop_reason(started_sweep()):  # a second Ctrl-C (joblib)
                forget_launch_marks(started_sweep())  # no summary reads them
                raise SweepStopped(
                    Interrupted("stopped at once by a second signal (the jobs it cut short say interrupted)"),
                    str(started_sweep()),
                    summarised=True,  # at once: no summary
                ) from None
            if no_trial_completed(exc):  # plain hydra/sweeper=optuna (mlprun_optuna ends such a study itself)
                raise MlprunError(
                    "no trial of the Optuna study has completed (each job's results.json says why); "
                    "hydra/sweeper=mlprun_optuna ends such a study with the sweep's summary"
                ) from None
            raise
        finally:
            restore_kept_multirun_yaml()
    except SystemExit:
        raise
    except SweepFailed as exc:  # SweepSummary has logged which jobs failed
        sys.exit(exc.exit_code)
    except SweepStopped as exc:  # a signal stopped the sweep
        if not exc.summarised:  # Hydra skips on_multirun_end when the sweep raises: the table of what is done
            try:
                build_report(Path(exc.sweep_dir))
            except Exception as err:  # the table is a report: never lose the stop's message over it
                log.warning(f"no sweep summary: {err}")
        sys.exit(report(sweep_stopped(str(exc), exc.sweep_dir)))
    except BaseException as exc:
        sys.exit(report(exc))
    sys.exit(EXIT_OK)


def check_flags(args: list[str]) -> None:
    """Hydra's argparse prints its whole usage before an error in its own flags (--cfg jobb,
    --foo): the same parser (hydra.main builds it with this function) is asked first, with its
    error in one line, exit 2."""
    parser = get_args_parser()

    def one_line(message: str):
        if message.startswith("unrecognized arguments"):  # --epochs 3: argparse's way, not Hydra's
            message += "; settings are overrides key=value, e.g. trainer.epochs=5"
        raise ConfigError("the command line", message=f"{message} (see mlprun --help)")

    parser.error = one_line
    parser.parse_args(args)


def printed_package(args: list[str]) -> str | None:
    """The -p/--package of a --cfg (-c) command: the part of the config Hydra prints."""
    if not any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in args):
        return None
    for i, a in enumerate(args):
        if a in ("-p", "--package") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--package="):
            return a.partition("=")[2]
    return None


def print_package(package: str) -> None:
    """Hydra's `--cfg job -p KEY`. For a key that does not exist and for one that holds null alike,
    Hydra writes "package 'KEY' not found in config" and exits 1: mlprun prints null for the
    latter, and for the former one line naming the key with the closest ones (exit 2)."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            hydra_app()
    except SystemExit as exc:
        if exc.code == 1 and said.getvalue().startswith(f"package '{package}' not found in config"):
            if holds_null(package):
                print("null")
                sys.exit(EXIT_OK)
            listing = "mlprun --cfg hydra" if package.startswith("hydra.") else "mlprun --cfg job"
            raise ConfigError(
                package,
                message=f"-p {package}: no such config key{suggest_key(package)} (list the keys with `{listing}`)",
            ) from None
        sys.stderr.write(said.getvalue())
        raise
    sys.stderr.write(said.getvalue())


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors in one line, as every other error of mlprun (argparse prints
    the whole usage first); --help still shows it."""

    def error(self, message: str):
        # argparse (3.11) names an optional nargs="*" positional among the required ones
        message = message.replace(", key=value", "")
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive(flag: str, value: int) -> None:
    """An integer option that must be at least 1: ConfigError (one line, exit 2) otherwise."""
    if value < 1:
        raise ConfigError(flag, message=f"{flag} must be a positive integer (1 or more), got {value}")


def eval_main(argv: list[str] | None = None) -> None:
    """`mlprun-eval <run dir | checkpoint> [--checkpoint best|last|swa] [dataset.root=...]`."""

    parser = OneLineParser(
        prog="mlprun-eval",
        description="Evaluate a trained mlprun run (or checkpoint) on its test set (or, with --split, its "
        "validation or training split): error with a 95% Wilson confidence interval, loss, per-class error. "
        "results.json is never modified.",
    )
    parser.add_argument("target", help="a run directory or a checkpoint file (.pt)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help=f"where the data lives: {', '.join(EVAL_OVERRIDES)}"
    )
    parser.add_argument(
        "--checkpoint",
        choices=CHECKPOINTS,
        default=None,
        help="which checkpoint of a run directory (default: swa if present, else best, else last)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="which split to score (default test; train: the checkpoint's model on its training split, in eval mode)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--plot", type=Path, default=None, help="also write the confusion matrix to this PNG")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json/--plot file")
    args = parser.parse_args(argv)
    with one_line_errors("mlprun-eval"):  # one line, the contract's exit codes
        positive("--batch-size", args.batch_size)
        for flag, path in (("--json", args.json), ("--plot", args.plot)):
            if path is not None:
                check_output(path, flag, args.force)
        loaded, m, split = evaluate_saved(
            args.target, args.checkpoint, args.overrides, args.device, args.batch_size, args.split
        )
        names = loaded.info.get("class_names") or [str(c) for c in range(len(m["confusion"]))]
        print(f"{loaded.path} ({loaded.which} checkpoint, epoch {m['epoch']}, dataset={loaded.cfg.dataset.name})")
        print(f"{report_line(m)}; accuracy {100 * m['accuracy']:.2f}%, loss {m['loss']:.4f}")
        area = f", AUROC {m['auroc']:.4f}" if m.get("auroc") is not None else ""
        print(f"macro F1 {m['f1']:.4f}, precision {m['precision']:.4f}, recall {m['recall']:.4f}{area}")
        worst = sorted(((e, c) for c, e in m["per_class_error"].items() if e), reverse=True)[:3]  # errors only
        per_class = [f"{c} {100 * e:.2f}%" for c, e in m["per_class_error"].items() if e is not None]
        print("\n".join(item_lines("per-class error: ", per_class)))
        if worst:
            print("hardest classes: " + ", ".join(f"{c} ({100 * e:.2f}%)" for e, c in worst))
        if args.json is not None:
            atomic_write_json(args.json, public_metrics(m))
            print(f"wrote {args.json}")
        if args.plot is not None:
            write_figures(m, split.y, names, args.plot, title=f"{loaded.path.name}: {report_line(m)}")
            print(f"wrote {args.plot}")
    sys.exit(0)


def predict_main(argv: list[str] | None = None) -> None:
    """`mlprun-predict <run dir | checkpoint> <image files or folders> [--csv out.csv]`."""
    parser = OneLineParser(
        prog="mlprun-predict",
        description="Classify image files with a trained mlprun run: predicted class and top-k probabilities.",
    )
    parser.add_argument("target", help="a run directory or a checkpoint file (.pt)")
    parser.add_argument("images", nargs="+", help="image files and/or folders of images")
    parser.add_argument(
        "--checkpoint",
        choices=CHECKPOINTS,
        default=None,
        help="which checkpoint of a run directory (default: swa if present, else best, else last)",
    )
    parser.add_argument("--csv", type=Path, default=None, help="also write the predictions to this CSV file")
    parser.add_argument("--top", type=int, default=3, help="how many classes to list (default 3)")
    parser.add_argument(
        "--invert",
        action="store_true",
        help="invert intensities first (dark strokes on a light background -> MNIST style)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --csv file")
    args = parser.parse_args(argv)
    with one_line_errors("mlprun-predict"):  # one line, the contract's exit codes
        positive("--top", args.top)
        if args.csv is not None:
            check_output(args.csv, "--csv", args.force)
        loaded = load_run(args.target, args.checkpoint, device=args.device)
        info = loaded.info
        if not info.get("image_shape"):
            raise ConfigError(
                "target",
                args.target,
                message=(
                    f"{loaded.path}: the run's dataset ({loaded.cfg.dataset.name}) is not made of images; "
                    f"mlprun-predict needs a run trained on images"
                ),
            )
        paths = find_images(args.images)
        x, note = prepare(paths, info["image_shape"], info.get("mean"), info.get("std"), args.invert)
        if note:
            print(f"mlprun-predict: note: {note}", file=sys.stderr)
        probs = predict(loaded, x)
        names = list(info.get("class_names") or [str(i) for i in range(probs.shape[1])])
        k = min(args.top, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        rows = []
        width = max(len(str(p)) for p in paths)
        for path, ps, idx in zip(paths, top_p.tolist(), top_i.tolist()):
            label = names[idx[0]]
            rows.append([str(path), label] + [v for i, p in zip(idx, ps) for v in (names[i], f"{p:.4f}")])
            tops = [f"{names[i]} {p:.3f}" for i, p in zip(idx, ps)]  # folded at the terminal's width
            print("\n".join(item_lines(f"{str(path):<{width}}  {label:<12} top-{k}:", tops)))
        if args.csv is not None:
            header = ["path", "predicted"] + [h for j in range(1, k + 1) for h in (f"top{j}", f"p{j}")]
            args.csv.parent.mkdir(parents=True, exist_ok=True)
            buf = io.StringIO()  # written at once: an earlier file (--force) is never left half replaced
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
            atomic_write_text(args.csv, buf.getvalue())
            print(f"wrote {args.csv} ({len(rows)} images)")
    sys.exit(0)


def report_main(argv: list[str] | None = None) -> None:
    """`mlprun-report <folder> [--no-plots] [--quiet] [--force]`."""
    parser = OneLineParser(
        prog="mlprun-report",
        description="Rebuild summary.csv, summary.md and the plots of a sweep folder (or of a folder of runs).",
    )
    parser.add_argument("folder", help="a sweep folder (runs/multirun/<date>/<time>-<pid>) or a folder of runs")
    parser.add_argument("--no-plots", action="store_true", help="only the tables")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite a summary.csv, summary.md or figure of the folder that mlprun did not write",
    )
    args = parser.parse_args(argv)
    with one_line_errors("mlprun-report"):  # one line, the contract's exit codes (Ctrl-C: 130)
        try:
            build_report(Path(args.folder), show=not args.quiet, plots=not args.no_plots, force=args.force)
        except OSError as exc:  # a folder that cannot be read or written: named, exit 1
            raise WriteError(f"{args.folder}: {exc.strerror or exc}") from None
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
