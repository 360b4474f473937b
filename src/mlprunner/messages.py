"""What reaches the user when something goes wrong: one line on stderr and the exit code.

Every entry point (mlprun, mlprun-eval, mlprun-predict, a sweep job) turns an exception into
`(exit code, one-line message)` here; Hydra's and OmegaConf's errors get a message naming the
key and what is allowed. Tracebacks only with MLPRUN_DEBUG=1 (or HYDRA_FULL_ERROR=1 set by the
user before `mlprun` sets it for itself).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import importlib.util
import os
import re
import sys
import traceback
from inspect import Parameter, signature

import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from hydra.utils import get_class
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from .config import OWN_GROUPS, register_resolvers
from .errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_RUNTIME, MlprunError, RunRefused, first_line
from .schema import GROUPS, suggest_option
from .schema import options as group_options

_USER_FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR")


def debug_enabled() -> bool:
    return os.environ.get("MLPRUN_DEBUG", "") not in ("", "0") or _USER_FULL_ERROR == "1"


def _cli_args() -> list[str]:
    return [a for a in sys.argv[1:] if not a.startswith("-")]


def _composed_keys(hydra_keys: bool = False) -> list[str]:
    """Every dotted key of the config the command line selects (its group choices only)."""
    cfg = _composed(hydra_keys)
    if cfg is None:
        return []
    keys: list[str] = []

    def walk(node, prefix):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            child = node._get_node(k)
            if isinstance(child, DictConfig):
                walk(child, full + ".")

    walk(cfg, "")
    return keys


def _composed(hydra_keys: bool = False) -> DictConfig | None:
    """The config the command line's group choices select (the defaults when they do not
    compose), or None."""
    choices = []
    for a in _cli_args():
        key, eq, _ = a.partition("=")
        group = key.lstrip("+~")
        if eq and "." not in key and (group in GROUPS or (hydra_keys and group.startswith("hydra/"))):
            choices.append(a)  # hydra/launcher=joblib: hydra.launcher.n_jobs is a key of that one
    register_resolvers()
    cfg = None
    for overrides in (choices, []):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_module("mlprunner.configs", version_base="1.3"):
                cfg = compose("config", overrides=overrides, return_hydra_config=hydra_keys)
            break
        except Exception:
            continue
        finally:
            GlobalHydra.instance().clear()
    return cfg


# groups whose keys are mlprun's own (no component class takes them as arguments)
OWN_KEY_GROUPS = (*OWN_GROUPS, "dataset")

# names other tools give a key, and mlprun's name for it (optim.learning_rate -> optim.lr)
KEY_ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "max_epochs": "epochs",
    "bs": "batch_size",
    "batchsize": "batch_size",
    "wd": "weight_decay",
}


def _same_name(key: str, keys: list[str]) -> list[str]:
    """The keys whose last part is `key`'s (or its alias's, in any case): lr -> optim.lr,
    optim.learning_rate -> optim.lr, trainer.bs -> trainer.batch_size; those of the same group
    first, then the shortest."""
    group, _, _ = key.partition(".")
    last = key.rpartition(".")[2]
    name = KEY_ALIASES.get(last.lower(), last.lower())
    same = [k for k in keys if k.rpartition(".")[2] == name and k != key]
    if name == last and "." in key:
        # a key of mlprun's own groups put in the wrong one (trainer.lr -> optim.lr); a component's
        # key its option lacks (scheduler.patience with scheduler=step) is another option's, not
        # a key elsewhere of that name
        if group not in OWN_KEY_GROUPS:
            return []
        same = [k for k in same if not k.startswith(group + ".")]
    elif "." in key and any(k.startswith(group + ".") for k in same):
        same = [k for k in same if k.startswith(group + ".")]
    return sorted(same, key=len)[:2]


def _takes(node: dict, name: str) -> bool:
    """Whether an option file sets `name` or its class takes it (nadam takes betas, unset)."""
    if name in node:
        return True
    try:
        return name in signature(get_class(str(node["_target_"]))).parameters
    except Exception:  # no class (scheduler=none), or one that does not import here
        return False


def component_key_hint(key: str) -> str:
    """For `group.name` that the group's option lacks: '+group.name=...' when its class takes
    `name`, else that it does not and which options of the group have it."""
    group, _, name = key.partition(".")
    hint = f"; an argument its _target_ takes but the option leaves out: +{key}=..."
    if "." in name or group not in GROUPS:
        return hint
    having = [option for option, node in group_options(group).items() if isinstance(node, dict) and _takes(node, name)]
    where = f"; options of {group} that take it: {', '.join(having)}" if having else ""
    try:
        target = _composed()[group].get("_target_")
        if target is None:  # scheduler=none: no class to take it
            return f"; the {group} option has no class{where}"
        params = signature(get_class(str(target))).parameters
    except Exception:  # a courtesy: the general hint
        return hint
    if name in params or any(p.kind is Parameter.VAR_KEYWORD for p in params.values()):
        return hint
    return f"; {target} takes no argument {name!r}{where}"


def holds_null(key: str) -> bool:
    """Whether `key` is in the config the command line selects (Hydra calls a key that holds
    null one that "does not exist")."""
    try:
        return key in _composed_keys(hydra_keys=key.startswith("hydra."))
    except Exception:  # a courtesy, as suggest_key
        return False


def suggest_key(key: str) -> str:
    """'; did you mean X?' (closest existing keys by difflib) or the keys beside `key`."""
    try:
        keys = _composed_keys(hydra_keys=key.startswith("hydra."))
    except Exception:  # a suggestion is a courtesy; never fail the error report itself
        return ""
    if not keys:
        return ""
    # its own groups are no suggestion for a key inside them (scheduler.gamma is no `scheduler`)
    others = [k for k in keys if not key.startswith(k + ".")]
    close = _same_name(key, others) or difflib.get_close_matches(key, others, n=2, cutoff=0.75)
    if close:
        return f"; did you mean {' or '.join(close)}?"
    parent = key.rpartition(".")[0]
    siblings = [
        k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent and k.rpartition(".")[2][:1] != "_"
    ]
    if parent and siblings:
        return f"; keys in {parent}: {', '.join(siblings)}"
    close = difflib.get_close_matches(key, others, n=2, cutoff=0.5)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _bad_override() -> str | None:
    """The first command-line override Hydra's grammar rejects."""
    parser = OverridesParser.create()
    for a in _cli_args():
        try:
            parser.parse_override(a)
        except Exception:
            return a
    return None


# modules of an optional extra (pyproject.toml) -> (distribution, extra, what needs it)
EXTRAS = {
    "submitit": ("submitit", "sweep", "hydra/launcher=slurm"),
    "hydra_plugins.hydra_submitit_launcher": ("hydra-submitit-launcher", "sweep", "hydra/launcher=slurm"),
    "hydra_plugins.hydra_joblib_launcher": ("hydra-joblib-launcher", "sweep", "hydra/launcher=joblib"),
    "hydra_plugins.hydra_optuna_sweeper": ("hydra-optuna-sweeper", "sweep", "hydra/sweeper=optuna"),
    "optuna": ("optuna", "sweep", "hydra/sweeper=optuna"),
    "mlflow": ("mlflow-skinny", "mlflow", "logger=mlflow"),
}


# Hydra config options that an optional extra's plugin package brings: (group/option) -> its module
OPTION_PLUGINS = {
    "hydra/launcher/joblib": "hydra_plugins.hydra_joblib_launcher",
    "hydra/launcher/submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher/submitit_local": "hydra_plugins.hydra_submitit_launcher",
    "hydra/sweeper/optuna": "hydra_plugins.hydra_optuna_sweeper",
}


def missing_extra_base(base: type, error: ImportError) -> type:
    """A stand-in for the base class of one of mlprun's Hydra plugins whose optional package (the
    sweep extra) is not installed. Hydra imports every plugin module at each start and warns in
    six lines about one that does not import, so the plugin modules import without the extra;
    building the plugin raises `error`, which describe_exception reports as the extra to install."""

    def refuse(self, *args, **kwargs):
        raise error

    methods = dict.fromkeys(getattr(base, "__abstractmethods__", ()), refuse)  # Launcher.launch, ...
    return type(f"Missing{base.__name__}", (base,), {**methods, "__init__": refuse})


def _missing_extra(exc: BaseException) -> str | None:
    """A missing package of an optional extra (raised directly or as the cause of Hydra's error):
    which extra to install, in one line."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, ModuleNotFoundError) and e.name:
            for module, (dist, extra, user) in EXTRAS.items():
                if e.name == module or e.name.startswith(module + "."):
                    return f"{user} needs {dist}, which is not installed: pip install 'mlprunner[{extra}]'"
    return None


def describe_exception(exc: BaseException) -> tuple[int, str]:
    """Map any exception to (exit code, one-line message)."""
    if isinstance(exc, RunRefused):
        exc = exc.error
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, HydraException) and isinstance(exc.__cause__, MlprunError):
        exc = exc.__cause__  # raised while Hydra instantiated a class of mlprun's (a launcher's checks)
    if isinstance(exc, MlprunError):
        return exc.exit_code, first_line(str(exc))
    missing = _missing_extra(exc)
    if missing:
        return EXIT_CONFIG, missing
    text = str(exc)
    if isinstance(exc, ValueError) and "does not support dynamic value space" in text:
        # Optuna: a study kept in the sweep folder (optuna.db) continued with other choice() values
        return EXIT_CONFIG, (
            "the sweep folder's Optuna study (optuna.db) was made with other choice() values; continue it "
            "with the same ones, or start a new study in another hydra.sweep.dir"
        )
    if isinstance(exc, ValueError) and text.startswith("Only one of --run, --multirun, --cfg"):
        if not {"-m", "--multirun"} & set(sys.argv[1:]):
            return EXIT_CONFIG, "--cfg, --info and --shell-completion cannot be combined; give one of them"
        return EXIT_CONFIG, (
            "-m (--multirun) cannot be combined with --cfg, --info or --shell-completion; to see a job's "
            "config, leave -m out and give each key one value: mlprun --cfg job <overrides>"
        )
    if isinstance(exc, MissingConfigException):
        missing = str(exc.missing_cfg_file or "")
        options = list(exc.options or [])
        group = missing.strip("/").rpartition("/")[0]
        if not options and group in GROUPS:  # Hydra gives none for an option in a list (logger=[a,b])
            options = list(group_options(group))
        plugin = OPTION_PLUGINS.get(missing.strip("/"))
        if plugin is not None and importlib.util.find_spec(plugin) is None:  # the sweep extra is not installed
            dist, extra, _ = EXTRAS[plugin]
            group, _, option = missing.strip("/").rpartition("/")
            return (
                EXIT_CONFIG,
                f"{group}={option} needs {dist}, which is not installed: pip install 'mlprunner[{extra}]'",
            )
        if "/" in missing:
            group, _, option = missing.rpartition("/")
            group = group.strip("/")
            msg = f"{group}={option}: no such option in config group '{group}'"
            if options:
                meant = suggest_option(group, option) if group in GROUPS else None
                if meant is None:
                    close = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
                    meant = close[0] if close else None
                msg += f"; available: {', '.join(options)}" + (f" (did you mean {group}={meant}?)" if meant else "")
            return EXIT_CONFIG, msg
        return EXIT_CONFIG, first_line(text)
    if isinstance(exc, OverrideParseException):
        what = exc.override or _bad_override()
        detail = [
            ln.strip()
            for ln in text.splitlines()
            if ln.strip() and not ln.startswith("Error parsing") and not ln.startswith("See https")
        ]
        reason = detail[0] if detail else "invalid syntax"
        if what:
            return EXIT_CONFIG, (
                f"cannot parse override '{what}': {reason}; overrides look like "
                f"key=value, e.g. trainer.epochs=5 or model.hidden=[500,300]"
            )
        return EXIT_CONFIG, f"cannot parse the command line: {reason}"
    if isinstance(exc, (ConfigCompositionException, HydraException, OmegaConfBaseException)):
        # Hydra raises these with the key only in the message text (no attribute carries it);
        # the patterns follow Hydra 1.3's wording, and a message they miss passes through as is
        m = re.search(r"Could not override '([^']+)'", text)
        cause = exc.__cause__
        if m:
            key = m.group(1)
            reason = first_line(str(cause)) if cause else first_line(text)
            if "not in struct" in reason or "Key '" in reason:
                if "." not in key:
                    return EXIT_CONFIG, (
                        f"{key}: no such config key or group{suggest_key(key)} (groups: {', '.join(GROUPS)})"
                    )
                # a key of a component (model, optim, ...) may be an argument its _target_ takes
                # that the option file leaves out; trainer, eval and dataset keys are mlprun's own
                suggestion = suggest_key(key)
                own = key.partition(".")[0] in OWN_KEY_GROUPS
                add = "" if own or suggestion.startswith("; did you mean") else component_key_hint(key)
                listing = "mlprun --cfg job"
                if key.startswith("hydra."):  # with the launcher/sweeper chosen: its keys are listed
                    chosen = [a for a in _cli_args() if a.partition("=")[0].lstrip("+").startswith("hydra/")]
                    listing = " ".join(["mlprun", *chosen, "--cfg hydra"])
                return EXIT_CONFIG, f"{key}: no such config key{suggestion} (list the keys with `{listing}`{add})"
            return EXIT_CONFIG, f"{key}: {reason}"
        m = re.search(r"Ambiguous value for argument '([^']+)'", text)
        if m:
            return EXIT_CONFIG, (
                f"ambiguous override '{m.group(1)}': to sweep over the values add "
                f"--multirun (-m); for a list write key=[a,b]; for a string quote it"
            )
        m = re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
        if m:
            return EXIT_CONFIG, f"+{m.group(1)}: the key already exists; override it without '+'"
        m = re.search(r"Could not delete from config\. '([^']+)' does not exist", text)
        if m:
            key = m.group(1)
            if holds_null(key):
                # Hydra deletes only a key with a value: for it null and absent are the same
                return EXIT_CONFIG, (
                    f"~{key}: {key} is null already (unset), so there is nothing to delete; "
                    f"leave the override out, or give it a value: {key}=<value>"
                )
            return EXIT_CONFIG, f"~{key}: no such config key to delete{suggest_key(key)}"
        m = re.search(r"Error merging override ([^=\s]+)=(\S*)", text)
        typed = re.search(r"(?:is not a valid|could not be converted to) (\w+)", f"{text} {cause or ''}")
        if m and typed:  # a value of the wrong type for one of Hydra's own typed keys (hydra.job.chdir=maybe)
            kind = typed.group(1).lower().replace("boolean", "bool").replace("integer", "int")
            allowed = {"bool": "true, false", "int": "an integer", "float": "a number"}.get(kind, kind)
            return EXIT_CONFIG, f"{m.group(1)}={m.group(2)} is invalid; allowed: {allowed}"
        msg = first_line(text)
        if cause is not None and first_line(str(cause)) and first_line(str(cause)) not in msg:
            msg += f": {first_line(str(cause))}"
        return EXIT_CONFIG, msg
    if isinstance(exc, yaml.MarkedYAMLError):
        # a YAML file of the user's (--config-dir, --config-path) that does not parse
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or first_line(text)
        if mark is None:
            return EXIT_CONFIG, f"invalid YAML: {what}"
        return (
            EXIT_CONFIG,
            f"{mark.name}:{mark.line + 1}: invalid YAML: {what} (line {mark.line + 1}, column {mark.column + 1})",
        )
    m = re.search(r"Config group override must be a string or a list\. Got (\w+)", text)
    if m:
        given = next((a for a in _cli_args() if a.partition("=")[0].lstrip("+") in GROUPS), None)
        group = given.partition("=")[0].lstrip("+") if given else "a config group"
        return EXIT_CONFIG, (
            f"{given or group}: a config group takes one option name (e.g. {group}=<option>); "
            f"to keep its default (or none for experiment), leave the override out"
        )
    if isinstance(exc, OSError) and exc.filename and exc.errno in FILE_PROBLEMS:
        # a folder made read-only, a file where a folder belongs: the path and what to do, no
        # "unexpected"; before _override_named_in, which a sweep job's folder name would match
        return EXIT_RUNTIME, f"{exc.filename}: {exc.strerror}; {FILE_PROBLEMS[exc.errno]}"
    if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
        # raised at the first step by trainer.compile (no C++ compiler, an unsupported op)
        return EXIT_RUNTIME, (
            f"trainer.compile=true: torch.compile failed: {type(exc).__name__}: {first_line(text)}; "
            "train without it: trainer.compile=false"
        )
    named = _override_named_in(text)
    if named is not None:
        return EXIT_CONFIG, f"{named}: {first_line(text)}"
    name = type(exc).__name__
    return EXIT_RUNTIME, f"unexpected {name}: {first_line(text)} (run with MLPRUN_DEBUG=1 for the traceback)"


# file errors a user can fix (errno: what to do), shown as one line without "unexpected"; a full
# disk is checkpoint.WriteError's (a failed write names no file)
FILE_PROBLEMS = {
    errno.EACCES: "give mlprun read and write access to it and its folder, or run elsewhere",
    errno.EPERM: "give mlprun read and write access to it and its folder, or run elsewhere",
    errno.EROFS: "the file system is read-only: run in a writable folder",
    errno.EISDIR: "a folder is where mlprun writes a file: move it away",
    errno.ENOTDIR: "a file is where mlprun needs a folder: move it away",
    errno.EEXIST: "a file is where mlprun needs a folder: move it away",
}


def _override_named_in(text: str) -> str | None:
    """The command-line hydra.* override whose key a Hydra plugin's error names (joblib's
    "n_jobs == 0 in Parallel has no meaning" for hydra.launcher.n_jobs=0), or None. Only hydra.*
    keys: mlprun checks its own keys itself, and an error in training that happens to contain a
    key's name ("expected device cpu" and trainer.device=cpu) is a runtime failure, not a value."""
    for a in _cli_args():
        key, eq, _ = a.lstrip("+~").partition("=")
        leaf = key.rpartition(".")[2]
        if not key.startswith("hydra."):
            continue
        if eq and len(leaf) > 2 and re.search(rf"(?<![A-Za-z0-9_]){re.escape(leaf)}(?![A-Za-z0-9_])", text):
            return a
    return None


def report(exc: BaseException, prog: str = "mlprun") -> int:
    """Print the one-line error (and the traceback when asked); return the exit code."""
    inner = exc.error if isinstance(exc, RunRefused) else exc
    if isinstance(inner, BrokenPipeError):
        # the reader of our output has gone (`mlprun-eval run | head -3`): stop quietly with 1,
        # as Python's documentation advises and rich's console does for the tables; the flush at
        # exit must not raise again
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_RUNTIME
    code, message = describe_exception(exc)
    if debug_enabled() and not isinstance(inner, KeyboardInterrupt):
        traceback.print_exception(type(inner), inner, inner.__traceback__, file=sys.stderr)
    sys.stdout.flush()
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return code


@contextlib.contextmanager
def one_line_errors(prog: str):
    """The body of a console tool (mlprun-eval, mlprun-predict): any exception leaves as one
    error line on stderr with the contract's exit code (report); SystemExit passes through."""
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:
        sys.exit(report(exc, prog=prog))
