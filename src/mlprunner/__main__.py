"""`python -m mlprunner` and the `mlprun` command (mlprunner.__main__:main).

On a terminal the first line is printed before the rest of mlprun is imported: importing
torch takes seconds, and a command that shows nothing for that long looks stuck."""

import sys

QUIET_FLAGS = {"--help", "-h", "--hydra-help", "--version", "-V", "--cfg", "-c", "--info", "-i", "-sc"}
QUIET_FLAGS |= {"--shell-completion", "--package", "-p"}


def announce(args: list[str]) -> None:
    if sys.stdout.isatty() and not QUIET_FLAGS.intersection(args):
        what = "to resume a run" if any(a.startswith("resume=") for a in args) else "and the configuration"
        sys.stdout.write(f"mlprun: loading PyTorch {what} ...\n")
        sys.stdout.flush()


announce(sys.argv[1:])

from .cli import main  # noqa: E402 (after the first line: this import loads torch)

if __name__ == "__main__":
    main()
