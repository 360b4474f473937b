"""`mlprun`: a thin @hydra.main around `run.run()`, plus one-line error reporting.

Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or arguments,
130 interrupted. Tracebacks only with MLPRUN_DEBUG=1 (or HYDRA_FULL_ERROR=1 set by the user).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import register_resolvers
from .errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_RUNTIME, MlprunError

log = logging.getLogger("mlprunner")
_USER_FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR")


def debug_enabled() -> bool:
    return os.environ.get("MLPRUN_DEBUG", "") not in ("", "0") or _USER_FULL_ERROR == "1"


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def describe_exception(exc: BaseException) -> tuple[int, str]:
    """Map any exception to (exit code, one-line message)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, MlprunError):
        return exc.exit_code, _first_line(str(exc))
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    text = str(exc)
    if isinstance(exc, MissingConfigException):
        m = re.search(r"Could not find '([^']+)'", text)
        options = [ln.strip() for ln in text.splitlines() if ln.startswith("\t")]
        if m and "/" in m.group(1):
            group, _, option = m.group(1).rpartition("/")
            group = group.strip("/")
            msg = f"{group}={option}: no such option in config group '{group}'"
            if options:
                msg += f"; available: {', '.join(options)}"
            return EXIT_CONFIG, msg
        return EXIT_CONFIG, _first_line(text)
    if isinstance(exc, OverrideParseException):
        m = re.search(r"Error parsing override '([^']*)'", text)
        what = m.group(1) if m else _first_line(text)
        detail = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
        return EXIT_CONFIG, f"cannot parse override '{what}'" + (f": {detail[0]}" if detail else "")
    if isinstance(exc, (ConfigCompositionException, HydraException, OmegaConfBaseException)):
        m = re.search(r"Could not override '([^']+)'", text)
        cause = exc.__cause__
        if m:
            key = m.group(1)
            reason = _first_line(str(cause)) if cause else _first_line(text)
            if "not in struct" in reason or "Key '" in reason:
                return EXIT_CONFIG, (f"{key}: no such config key; to list the keys run "
                                     f"`mlprun --cfg job` (to add a new key use +{key}=...)")
            return EXIT_CONFIG, f"{key}: {reason}"
        m = re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
        if m:
            return EXIT_CONFIG, f"+{m.group(1)}: the key already exists; override it without '+'"
        msg = _first_line(text)
        if cause is not None and _first_line(str(cause)) and _first_line(str(cause)) not in msg:
            msg += f": {_first_line(str(cause))}"
        return EXIT_CONFIG, msg
    name = type(exc).__name__
    return EXIT_RUNTIME, f"unexpected {name}: {_first_line(text)} (run with MLPRUN_DEBUG=1 for the traceback)"


def report(exc: BaseException) -> int:
    """Print the one-line error (and the traceback when asked); return the exit code."""
    code, message = describe_exception(exc)
    if debug_enabled() and not isinstance(exc, KeyboardInterrupt):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stdout.flush()
    print(f"mlprun: error: {message}", file=sys.stderr, flush=True)
    return code


@hydra.main(version_base="1.3", config_path="pkg://mlprunner.configs", config_name="config")
def hydra_app(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:
        from .sweep import run_sweep_job

        return run_sweep_job(cfg, run_dir, overrides)
    from .run import run

    try:
        results = run(cfg, run_dir, overrides=overrides)
    except BaseException as exc:  # single run: report in one line and exit with its code
        sys.exit(report(exc))
    best = (results.get("best") or {}).get("val") or {}
    return best.get("error")


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `mlprun`."""
    register_resolvers()
    # Let Hydra's own errors reach us as exceptions, so we can print them in one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = sys.argv[1:]
    try:
        resume = [a for a in args if a.startswith("resume=") and a != "resume=null"]
        if resume:
            from .resume import resume_main

            sys.exit(resume_main(args))
        hydra_app()
    except SystemExit:
        raise
    except BaseException as exc:
        sys.exit(report(exc))
    from .sweep import sweep_exit_code

    sys.exit(sweep_exit_code())


if __name__ == "__main__":
    main()
