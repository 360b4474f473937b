"""`python -m mlprunner` and the `mlprun` command (mlprunner.__main__:main).

On a terminal the first line is printed before the rest of mlprun is imported: importing
torch takes seconds, and a command that shows nothing for that long looks stuck."""

import signal
import sys

QUIET_FLAGS = {"--help", "-h", "--hydra-help", "--version", "-V", "--cfg", "-c", "--info", "-i", "-sc"}
QUIET_FLAGS |= {"--shell-completion", "--package", "-p"}


def announce(args: list[str]) -> None:
    if sys.stdout.isatty() and not QUIET_FLAGS.intersection(args):
        what = "to resume a run" if any(a.startswith("resume=") for a in args) else "and the configuration"
        sys.stdout.write(f"mlprun: loading PyTorch {what} ...\n")
        sys.stdout.flush()


# A SIGINT/SIGTERM while torch is imported (after the first line): noted here, and the run stops
# before anything is written (cli.main hands it to run.STARTUP); a second one leaves at once.
PENDING: list[str] = []


def _note(signum, frame) -> None:
    if PENDING:
        sys.stderr.write("mlprun: error: interrupted before anything was written\n")
        sys.exit(130)
    PENDING.append(signal.Signals(signum).name)
    sys.stderr.write(
        f"mlprun: {PENDING[0]} received: stopping as soon as it is safe (press Ctrl-C again to quit at once)\n"
    )


if not QUIET_FLAGS.intersection(sys.argv[1:]):
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, _note)
announce(sys.argv[1:])

from .cli import main as cli_main  # noqa: E402 (after the first line: this import loads torch)


def main() -> None:
    """The `mlprun` command."""
    try:
        cli_main(early_signals=PENDING)
    except SystemExit as exc:
        if exc.code == 130:  # stopped by a signal, already said and recorded: a next one while the
            # interpreter winds down (torch's teardown, ~1 s) must not turn exit 130 into a kill
            # (Python puts back the default handlers of its own ones as it finalises, not SIG_IGN)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
        raise


if __name__ == "__main__":
    main()
