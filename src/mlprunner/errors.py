"""Errors that reach the user as one line, with the exit codes of the shared contract."""

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


class MlprunError(Exception):
    """A runtime failure the user can act on (exit code 1)."""

    exit_code = EXIT_RUNTIME


def first_line(what, limit: int | None = None) -> str:
    """The first non-blank line of an exception's (or a text's) message, `limit` characters at
    most: what a one-line error quotes of a library's error. An exception with no message gives
    its type's name (ValueError()), a text with none ''."""
    line = next((ln.strip() for ln in str(what).splitlines() if ln.strip()), "")
    if not line and isinstance(what, BaseException):
        line = type(what).__name__
    if limit is not None and len(line) > limit:
        line = line[: limit - 3] + "..."
    return line


def shown(value) -> str:
    """A config value as it is typed on the command line: true/false/null, not Python's."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else repr(value)


class ConfigError(MlprunError):
    """An invalid configuration value or command-line argument (exit code 2)."""

    exit_code = EXIT_CONFIG

    def __init__(self, key: str, value=None, allowed: str | None = None, message: str | None = None):
        self.key = key
        self.value = value
        self.allowed = allowed
        if message is None:
            message = f"{key}={shown(value)} is invalid"
            if allowed:
                message += f"; allowed: {allowed}"
        super().__init__(message)


class CheckpointError(MlprunError):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the model."""


class DatasetError(MlprunError):
    """Dataset files that are missing, truncated or malformed."""


class WriteError(MlprunError):
    """A file of the run could not be written (a full disk, a quota, no permission); the file
    it replaces stays as it was (writes are atomic)."""


class LoggerIncomplete(MlprunError):
    """The run completed (its results.json says so) but a logger could not finish its copy (an
    MLflow run left RUNNING, TensorBoard's last events unwritten): exit 1, the run stays completed."""


class DivergenceError(MlprunError):
    """The training loss became NaN or infinite."""


class RunInUse(MlprunError):
    """The run folder is locked by another running mlprun process (record.lock_run_dir)."""


class Interrupted(MlprunError):
    """The user (or the scheduler) asked the run to stop: SIGINT or SIGTERM."""

    exit_code = EXIT_INTERRUPTED


class RunRefused(BaseException):
    """Carries an error out of a Hydra callback before the run folder is made.

    Hydra turns an `Exception` raised in a callback into a warning and goes on, so the guard
    that validates a run before Hydra writes anything raises this `BaseException` instead;
    `mlprun` unwraps it and reports `error` with its own exit code.
    """

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class SweepStopped(RunRefused):
    """A signal stopped a sweep job that runs in `mlprun`'s own process (Hydra's basic launcher):
    carried past Hydra's per-job `except Exception` (which would note the job failed and start the
    next one) out of the sweep to `mlprun`, which names the command that continues the sweep."""

    def __init__(self, error: BaseException, sweep_dir: str, summarised: bool = False):
        super().__init__(error)
        self.sweep_dir = sweep_dir
        self.summarised = summarised  # its summary is written already (or must not be: quit at once)


class SweepFailed(BaseException):
    """Carries the failed jobs of a multirun from the callback that reads them back (at the end
    of the sweep, in the parent process) out of Hydra to `mlprun`'s exit code: 1, or 2 when
    every one was refused for its values. A `BaseException` for the same reason as RunRefused:
    Hydra turns an `Exception` raised in a callback into a warning."""

    def __init__(self, failed: list[str], exit_code: int = EXIT_RUNTIME):
        super().__init__(f"{len(failed)} job(s) failed")
        self.failed = failed
        self.exit_code = exit_code  # EXIT_CONFIG when every failed job was refused for its values
