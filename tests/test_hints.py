"""The closing lines of a run (run folder, tensorboard, how to train longer) name paths that work
where the user typed `mlprun`, also with hydra.job.chdir=true (Hydra then runs the job in the run
folder, so paths relative to the current folder came out as '.')."""

from __future__ import annotations

import shlex

from conftest import QUICK, read_json, run_mlprun

DIGITS = ["dataset=digits", "model.hidden=[16]", "trainer.epochs=1", *QUICK]


def _hints(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        for prefix in ("run folder: ", "tensorboard --logdir ", "train longer: "):
            if line.startswith(prefix):
                out[prefix.strip().rstrip(":")] = line.removeprefix(prefix)
    return out


def test_chdir_hints_name_paths_from_the_launch_folder_and_the_command_works(tmp_path):
    launch = tmp_path / "launch"
    launch.mkdir()
    proc = run_mlprun(*DIGITS, "hydra.job.chdir=true", "hydra.run.dir=runs/cd1", cwd=launch, timeout=300, check=True)
    hints = _hints(proc.stdout)
    assert hints["run folder"] == "runs/cd1", proc.stdout[-2000:]
    assert hints["tensorboard --logdir"] == "runs/cd1/tensorboard", proc.stdout[-2000:]
    assert (launch / hints["tensorboard --logdir"]).is_dir()
    assert hints["train longer"] == "mlprun resume=runs/cd1 trainer.epochs=2", proc.stdout[-2000:]
    # the printed command, typed where the first one was
    args = shlex.split(hints["train longer"])
    assert args[0] == "mlprun"
    more = run_mlprun(*args[1:], cwd=launch, timeout=300, check=True)
    results = read_json(launch / "runs" / "cd1" / "results.json")
    assert results["status"] == "completed" and results["epochs_completed"] == 2, more.stdout[-2000:]
    assert _hints(more.stdout)["run folder"] == "runs/cd1", more.stdout[-2000:]
    assert not list((launch / "runs" / "cd1").glob("runs"))  # nothing nested in the run folder
