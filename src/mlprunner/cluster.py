"""A sweep on SLURM (hydra/launcher=slurm), in the sweep's own process.

Before submitting: each combination's config is composed and validated (an invalid one gets a
failed results.json and no SLURM job), a combination already completed in the sweep folder is
not submitted, one whose SLURM job from an earlier launch of the sweep is still queued or
running is waited for instead of submitted again, and the partition, cpus_per_task / mem_gb and
gpus_per_node are checked against the partition's nodes (`sinfo`).
After submitting: the SLURM job ids and the log folder are printed, and the sweep waits on
SLURM's own job states (`squeue`, then `scontrol`; `sacct` only where accounting exists), so a
job that is requeued (time limit, `scontrol requeue`, preemption) is waited for again, and a job
that ends without a result (cancelled, killed, lost node) is reported with its state and log
instead of being waited on forever. A job pending longer than `pending_warn_s` is reported with
SLURM's reason. With `max_models` > 1 the combinations left to run are grouped as
hydra/launcher=stacked groups them (stacked.plan_groups) and each group is one SLURM job (one
task of the array) that trains its members together (mlprun_stacked.run_group_jobs); each
member keeps its own folder and results.json, which the wait reads one by one. Ctrl-C says
which jobs are still queued or running and how to cancel them (or cancels them with
`cancel_on_interrupt`). The outcome of every job is in its results.json:
completed, failed, interrupted, cancelled or lost; `SweepSummary` turns it into the exit code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import time
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from omegaconf import OmegaConf, open_dict

from .checkpoint import atomic_write_json
from .config import validate
from .errors import ConfigError, Interrupted, MlprunError, SweepStopped
from .results import read_results
from .run import STARTUP
from .runs import submission_file
from .stacked import log_alone, plan_groups
from .sweep import (
    best_val_error,
    claim_run_dir,
    in_use_since,
    mark_job,
    record_end,
    record_failure,
    record_requeue,
    record_time_limit,
    results_stamps,
)

log = logging.getLogger("mlprunner")

# SLURM job states after which the job will not run again (squeue/scontrol/sacct spelling)
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "SPECIAL_EXIT",
    "GONE",  # no longer known to SLURM (purged after MinJobAge, no accounting)
}
# reasons that never go away by waiting: the request does not fit the partition
HOPELESS_REASONS = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints"}


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} for SLURM jobs ("12" or array tasks "12_3"). A job SLURM no
    longer knows (purged, and no accounting) is ("GONE", ...); one whose state cannot be read
    now (slurmctld not answering) is left out, so the caller asks again later."""
    out: dict[str, tuple[str, str]] = {}
    masters = sorted({j.split("_")[0] for j in job_ids})
    res = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(masters)])
    if res is None or res.returncode != 0:
        if res is None or "Invalid job id" not in (res.stderr or ""):
            return out  # slurmctld busy or down: ask again later
    else:
        for line in res.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[0] in job_ids:
                out[parts[0]] = (parts[1].split()[0], parts[2])
    for job_id in job_ids:
        if job_id in out:
            continue
        res = _run(["scontrol", "-o", "show", "job", job_id])
        if res is not None and res.returncode == 0 and "JobState=" in res.stdout:
            fields = dict(f.split("=", 1) for f in res.stdout.split() if "=" in f)
            out[job_id] = (fields.get("JobState", "UNKNOWN"), fields.get("Reason", ""))
            continue
        if res is None or "Invalid job id" not in (res.stderr or ""):
            continue
        res = _run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id])
        state = res.stdout.split()[0] if res is not None and res.returncode == 0 and res.stdout.split() else ""
        out[job_id] = (state.split()[0] if state else "GONE", "" if state else "no longer known to SLURM")
    return out


def check_resources(params: dict) -> None:
    """cpus_per_task and mem_gb must fit one node of the partition (else the jobs pend forever
    with Reason=PartitionConfig); checked with `sinfo` when it answers."""
    cmd = ["sinfo", "-h", "-o", "%c|%m"]
    if params.get("partition"):
        cmd += ["-p", str(params["partition"])]
    res = _run(cmd)
    if res is not None and res.returncode == 0 and not res.stdout.strip() and params.get("partition"):
        # sinfo knows no such partition (sbatch would fail with its own three lines)
        known = _run(["sinfo", "-h", "-o", "%R"])
        names = sorted(set(known.stdout.split())) if known is not None and known.returncode == 0 else []
        if names:
            raise ConfigError(
                "hydra.launcher.partition",
                params["partition"],
                f"a partition of this cluster: {', '.join(names)}",
            )
    if res is None or res.returncode != 0 or not res.stdout.strip():
        return
    nodes = [line.split("|") for line in res.stdout.split()]
    try:
        cpus = max(int(c.rstrip("+")) for c, _ in nodes)
        mem_mb = max(int(m.rstrip("+")) for _, m in nodes)
    except ValueError:
        return
    where = f"partition {params['partition']}" if params.get("partition") else "the default partition"
    want = params.get("cpus_per_task")
    if want and int(want) > cpus:
        raise ConfigError(
            "hydra.launcher.cpus_per_task",
            message=f"hydra.launcher.cpus_per_task={want}: the largest node of {where} has {cpus} CPUs; "
            f"allowed: 1..{cpus}",
        )
    want = params.get("mem_gb")
    if want and int(want) * 1024 > mem_mb:
        raise ConfigError(
            "hydra.launcher.mem_gb",
            message=f"hydra.launcher.mem_gb={want}: the largest node of {where} has {mem_mb} MB; "
            f"allowed: at most {mem_mb // 1024}",
        )
    want = params.get("gpus_per_node")
    if want and int(want) > 0:  # sbatch refuses a gres the nodes lack ("Invalid generic resource")
        gres = _run(cmd[:3] + ["%G"] + cmd[4:])
        if gres is not None and gres.returncode == 0 and "gpu" not in gres.stdout:
            raise ConfigError(
                "hydra.launcher.gpus_per_node",
                message=f"hydra.launcher.gpus_per_node={want}: no node of {where} has a GPU (sinfo lists no "
                "gpu resource); allowed: 0, or a partition with GPUs (hydra.launcher.partition=...)",
            )


def _job_return(overrides, cfg, run_dir: Path, value) -> JobReturn:
    return JobReturn(
        overrides=list(overrides),
        cfg=OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]),
        hydra_cfg=cfg,
        working_dir=str(run_dir),
        task_name=str(cfg.hydra.job.name),
        status=JobStatus.COMPLETED,
        _return_value=value,
    )


def _outcome(job_id: str, log_file: str, run_dir: Path, overrides, state: str, reason: str, in_use: dict) -> str:
    """The job's final status, written to its results.json where the job could not (but never
    into a folder the job found in use by another process)."""
    if str(run_dir.resolve()) in in_use:
        return "in use"
    status = (read_results(run_dir) or {}).get("status")
    if status in ("completed", "failed"):
        return status
    if state.startswith("CANCELLED"):
        record_end(run_dir, overrides, "cancelled", f"SLURM job {job_id} was cancelled; rerun the sweep to continue it")
        return "cancelled"
    if status == "interrupted":  # its time limit with no requeue left: the job said so itself
        return status
    why = f"SLURM job {job_id} ended {state}{f' ({reason})' if reason and reason != 'None' else ''}"
    record_end(run_dir, overrides, "lost", f"{why} without a result; log: {log_file}")
    return "lost"


def _settings(params: dict) -> dict:
    """The launcher's submission settings as JSON reads them back (for comparing with a rerun's);
    not submitit_folder, which spells the sweep folder as typed (relative, absolute, trailing /)."""
    return json.loads(json.dumps({k: v for k, v in params.items() if k != "submitit_folder"}, default=str))


def _note_submitted(sweep_dir: Path, jobs: list, groups: list, params: dict) -> None:
    settings = _settings(params)
    for job, group in zip(jobs, groups):
        for _, _, _, run_dir in group:
            entry = {"job_id": str(job.job_id), "log": str(job.paths.stderr), "settings": settings}
            path = submission_file(sweep_dir, run_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, entry)


def _forget_submitted(sweep_dir: Path, run_dir: Path) -> None:
    """The combination's SLURM job has ended: no rerun has it to wait for (the folders go once empty)."""
    path = submission_file(sweep_dir, run_dir)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()
        path.parent.parent.rmdir()


def _still_queued(launcher, todo: list, sweep_dir: Path, initial_job_idx) -> tuple[list, dict]:
    """(the combinations to submit, {job id: (log, combinations)} to wait for): a combination
    whose SLURM job from an earlier launch of this sweep is still queued or running, submitted
    with the same launcher settings, is waited for and not submitted again (two jobs would train
    one folder in turn, the second for nothing). With other settings (e.g. a longer timeout_min
    for a job stuck pending) it is submitted again and the earlier job is named for scancel."""
    earlier = {}
    for entry in todo:
        path = submission_file(sweep_dir, entry[3])
        try:
            earlier[entry[0]] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    states = slurm_states(sorted({e["job_id"] for e in earlier.values()})) if earlier else {}
    # a job SLURM does not answer for now is waited for, not submitted again: the wait asks again
    unknown = ("UNKNOWN", "SLURM did not answer")
    now = _settings(dict(launcher.params))
    submit, adopted = [], {}
    for entry in todo:
        i, overrides = entry[0], entry[1]
        prior = earlier.get(i)
        state = states.get(prior["job_id"], unknown)[0] if prior else ""
        if not state or state in FINAL_STATES:
            submit.append(entry)
            continue
        label = f"#{initial_job_idx + i} {' '.join(filter_overrides(overrides))}"
        job_id = prior["job_id"]
        if prior.get("settings") != now:
            log.warning(
                f"{label}: SLURM job {job_id} from an earlier launch is still {state}, submitted with other "
                f"launcher settings: submitting again; cancel the earlier one with: scancel {job_id}"
            )
            submit.append(entry)
            continue
        where = "may still be queued (SLURM did not answer)" if state == unknown[0] else f"is still {state}"
        log.info(f"{label}: SLURM job {job_id} from an earlier launch {where}: waiting for it")
        adopted.setdefault(job_id, (prior.get("log", "?"), []))[1].append(entry)
    return submit, adopted


def claimed_in_job(launcher, sweep_overrides, job_num: int, singleton_state) -> bool:
    """In the SLURM job, before Hydra writes anything into the run folder: take its lock. False
    (and a marker in the sweep folder, see sweep.claim_run_dir) when another running process,
    e.g. an older sweep's job, trains there: then the job ends without touching the folder."""
    Singleton.set_state(singleton_state)
    setup_globals()
    return _claimed(launcher, sweep_overrides, job_num) is not None


def _claimed(launcher, sweep_overrides, job_num: int):
    """The job's config when this process took its run folder's lock, else None."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(sweep_overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = job_num
    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    return cfg if claim_run_dir(sweep_dir / str(cfg.hydra.sweep.subdir), sweep_dir) else None


def claimed_group_in_job(launcher, group_overrides, job_nums, singleton_state, slurm_job_id: str) -> list:
    """claimed_in_job for each member of a stacked group (call it under record.holding_locks, so
    every lock stays held): the configs of the members whose folder this job holds now; a member
    whose folder another running process holds is left untouched (reported "in use")."""
    Singleton.set_state(singleton_state)
    setup_globals()
    configs = []
    for overrides, job_num in zip(group_overrides, job_nums):
        cfg = _claimed(launcher, overrides, job_num)
        if cfg is not None:
            with open_dict(cfg.hydra.job):
                cfg.hydra.job.id = slurm_job_id
            configs.append(cfg)
    return configs


def requeued_group(configs) -> None:
    """submitit's SIGUSR2 handler (time limit, preemption) saved the group's job for a requeue
    and leaves with SystemExit: each unfinished member is interrupted, not failed, and resumes
    from its own checkpoints/last.pt in the requeued job (as sweep.run_sweep_job does alone)."""
    for cfg in configs:
        record_requeue(Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir))


def timed_out_group(configs) -> None:
    """The same handler with no requeue left (sweep.out_of_requeues): each unfinished member is
    interrupted, not failed, so the rerun resumes it instead of starting it again from scratch."""
    for cfg in configs:
        run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        if (read_results(run_dir) or {}).get("status") != "completed":
            record_time_limit(run_dir, list(cfg.hydra.overrides.task))


def failed_members(configs) -> list[str]:
    """The members of a group whose results.json says failed, as `#num overrides`."""
    out = []
    for cfg in configs:
        run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        if (read_results(run_dir) or {}).get("status") == "failed":
            out.append(f"#{cfg.hydra.job.num} {' '.join(filter_overrides(list(cfg.hydra.overrides.task)))}")
    return out


def _tidy(folder: Path) -> None:
    """submitit leaves `.submission_file_*.sh` links in its folder; the scripts are in the jobs' own."""
    for link in folder.glob(".submission_file_*.sh"):
        if link.is_symlink():
            link.unlink(missing_ok=True)


def _give_up(waiting: dict, silent_s: float, sweep_dir: Path, initial_job_idx: int, returns: dict) -> None:
    """SLURM (squeue, scontrol) has not answered for `unreachable_s`: stop waiting; the jobs left
    are marked "not collected" for the summary (sweep.mark_job); nothing is written into
    their folders (they may still be running)."""
    left = sorted(waiting)
    how = f"collect them later with: mlprun-report {sweep_dir} (or rerun this sweep command)"
    log.error(
        f"SLURM has not answered for {silent_s:.0f} s (squeue/scontrol fail): stopped waiting; "
        f"not collected: SLURM job(s) {' '.join(left)}; they may still run: {how}"
    )
    for job_id in left:
        _, members = waiting.pop(job_id)
        for i, overrides, cfg, run_dir in members:
            log.error(f"  {job_id}: #{initial_job_idx + i} {' '.join(filter_overrides(overrides))}: not collected")
            reason = f"SLURM job {job_id} not collected (SLURM did not answer); {how}"
            mark_job(sweep_dir, run_dir, "not collected", reason)
            returns[i] = _job_return(overrides, cfg, run_dir, None)


def _plan(launcher, job_overrides, initial_job_idx, sweep_dir: Path, returns: dict) -> list:
    """The combinations to submit, as (index, overrides, cfg, run_dir); those completed in the
    sweep folder and those whose config is invalid get their JobReturn here, with no SLURM job."""
    config = launcher.config
    loader = launcher.hydra_context.config_loader
    todo = []
    for i, overrides in enumerate(job_overrides):
        cfg = loader.load_sweep_config(config, list(overrides))
        run_dir = sweep_dir / str(cfg.hydra.sweep.subdir)
        label = " ".join(filter_overrides(overrides))
        prior = read_results(run_dir)
        if (prior or {}).get("status") == "completed":
            log.info(f"#{initial_job_idx + i} {label}: already completed in {run_dir}, not submitted")
            _forget_submitted(sweep_dir, run_dir)  # its job, ended after a Ctrl-C, has nothing left to wait for
            returns[i] = _job_return(overrides, cfg, run_dir, best_val_error(prior))
            continue
        try:
            validate(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]))
        except MlprunError as exc:
            log.error(f"#{initial_job_idx + i} {label}: invalid, not submitted: {exc}")
            record_failure(run_dir, list(overrides), str(exc), invalid=isinstance(exc, ConfigError))
            returns[i] = _job_return(overrides, cfg, run_dir, None)
            continue
        todo.append((i, overrides, cfg, run_dir))
    return todo


def _group(todo: list, max_models: int) -> list[list]:
    """`todo` in SLURM jobs: one combination each, or with max_models > 1 the groups
    hydra/launcher=stacked would train together (stacked.plan_groups)."""
    if max_models <= 1:
        return [[t] for t in todo]
    cfgs = [OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) for _, _, cfg, _ in todo]
    log_alone(cfgs)
    return [[todo[k] for k in group] for group in plan_groups(cfgs, max_models)]


def _task_args(group: list, initial_job_idx, state) -> tuple:
    """The launcher's __call__ arguments for one SLURM job: a combination's (as submitit_slurm
    passes them), or a group's (its members' overrides and job numbers as lists)."""
    if len(group) == 1:
        ((i, o, _, _),) = group
        return list(o), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}", state
    first = initial_job_idx + group[0][0]
    return (
        [list(o) for _, o, _, _ in group],
        "hydra.sweep.dir",
        [initial_job_idx + i for i, *_ in group],
        (f"job_id_for_{first}"),
        state,
    )


def _submit(launcher, groups: list, initial_job_idx, sweep_dir: Path) -> list:
    """One SLURM job array, one task per group of `groups`; prints the job ids, the
    combinations each holds and where their logs go."""
    import submitit  # lazy: a heavy import, only for SLURM sweeps

    params = dict(launcher.params)
    check_resources(params)
    folder = params.pop("submitit_folder")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=folder, slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name"}
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    state = Singleton.get_state()
    args = [_task_args(group, initial_job_idx, state) for group in groups]
    jobs = executor.map_array(launcher, *zip(*args))
    _note_submitted(sweep_dir, jobs, groups, dict(launcher.params))
    _tidy(Path(str(jobs[0].paths.folder)).parent if jobs else sweep_dir)
    ids = [str(j.job_id) for j in jobs]
    if any(len(group) > 1 for group in groups):
        n = sum(len(group) for group in groups)
        log.info(
            f"{n} combination(s) in {len(groups)} stacked group(s) of up to {launcher.max_models}, one SLURM job "
            f"each (sizes {', '.join(str(len(group)) for group in groups)})"
        )
    log.info(f"submitted {len(jobs)} SLURM job(s): {', '.join(ids)}; logs: {jobs[0].paths.folder.parent}")
    for job, group in zip(jobs, groups):
        for i, overrides, _, _ in group:
            log.info(f"  {job.job_id}: #{initial_job_idx + i} {' '.join(filter_overrides(overrides))}")
    return jobs


def _wait(
    waiting: dict, returns: dict, sweep_dir: Path, before: dict, initial_job_idx, poll_s, pending_warn_s, unreachable_s
) -> None:
    """Poll SLURM's job states until every job in `waiting` ({job id: (its log, its combinations
    as todo entries)}) has a final one (requeued jobs are waited for again), or SLURM stops
    answering for `unreachable_s`."""
    seen: dict[str, str] = {}
    since: dict[str, float] = {}
    warned: set[str] = set()
    answered = time.monotonic()  # when SLURM last told a job state
    while waiting:
        if STARTUP.requested:  # Ctrl-C/SIGTERM: mlprun's early handler only noted it (run.py)
            raise KeyboardInterrupt
        states = slurm_states(list(waiting))
        now = time.monotonic()
        if states:
            answered = now
        elif now - answered >= unreachable_s:
            _give_up(waiting, now - answered, sweep_dir, initial_job_idx, returns)
            return
        for job_id, (st, reason) in states.items():
            log_file, members = waiting[job_id]
            if seen.get(job_id) != st:
                if seen.get(job_id) is not None or st != "PENDING":
                    log.info(f"SLURM job {job_id}: {st}{f' ({reason})' if st == 'PENDING' else ''}")
                seen[job_id] = st
                since[job_id] = now
            if st == "PENDING" and job_id not in warned:
                if reason in HOPELESS_REASONS or now - since[job_id] >= pending_warn_s:
                    warned.add(job_id)
                    hint = " (the request does not fit the partition's nodes)" if reason in HOPELESS_REASONS else ""
                    log.warning(f"SLURM job {job_id} pending for {now - since[job_id]:.0f} s: Reason={reason}{hint}")
            if st in FINAL_STATES:
                in_use = in_use_since(sweep_dir, before)
                for i, overrides, cfg, run_dir in members:  # a group's members: each its own outcome
                    outcome = _outcome(job_id, log_file, run_dir, overrides, st, reason, in_use)
                    line = f"SLURM job {job_id} (#{initial_job_idx + i}): {outcome}"
                    why = in_use.get(str(run_dir.resolve())) or (read_results(run_dir) or {}).get("reason")
                    (log.info if outcome == "completed" else log.error)(
                        line + ("" if outcome == "completed" else f": {why}")
                    )
                    value = best_val_error(read_results(run_dir)) if outcome == "completed" else None
                    returns[i] = _job_return(overrides, cfg, run_dir, value)
                    _forget_submitted(sweep_dir, run_dir)
                del waiting[job_id]
        if waiting:
            time.sleep(poll_s)


def launch_on_slurm(
    launcher,
    job_overrides,
    initial_job_idx,
    poll_s=2.0,
    pending_warn_s=60.0,
    cancel_on_interrupt=False,
    unreachable_s=300.0,
):
    """The launch() of hydra_plugins.mlprun_launcher.MlprunSlurmLauncher (see the module doc):
    plan (skip completed, refuse invalid), group (launcher.max_models), submit one job array
    (one task per group), wait on SLURM's job states."""
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    returns: dict[int, JobReturn] = {}
    todo = _plan(launcher, job_overrides, initial_job_idx, sweep_dir, returns)
    todo, waiting = _still_queued(launcher, todo, sweep_dir, initial_job_idx) if todo else ([], {})
    if not todo and not waiting:
        return [returns[i] for i in range(len(job_overrides))]
    before = results_stamps(sweep_dir)  # tells this sweep's in-use markers from older ones
    if todo:
        groups = _group(todo, launcher.max_models)
        jobs = _submit(launcher, groups, initial_job_idx, sweep_dir)
        waiting.update({str(j.job_id): (str(j.paths.stderr), group) for j, group in zip(jobs, groups)})
    try:
        _wait(waiting, returns, sweep_dir, before, initial_job_idx, poll_s, pending_warn_s, unreachable_s)
    except KeyboardInterrupt:
        left = sorted(waiting)
        if cancel_on_interrupt:
            _run(["scancel", *left])
            log.error(f"interrupted: cancelled SLURM job(s) {' '.join(left)}")
            for job_id in left:  # what the summary says of them (the jobs may still write interrupted)
                for _, overrides, _, run_dir in waiting[job_id][1]:
                    if (read_results(run_dir) or {}).get("status") not in ("completed", "failed"):
                        reason = (
                            f"SLURM job {job_id} was cancelled by the sweep's Ctrl-C; rerun the sweep to continue it"
                        )
                        record_end(run_dir, overrides, "cancelled", reason)
            # as any stopped sweep: its summary, and the command that continues it
            raise SweepStopped(Interrupted(f"cancelled SLURM job(s) {' '.join(left)}"), str(sweep_dir)) from None
        else:
            log.error(
                f"interrupted: SLURM job(s) {' '.join(left)} are still queued or running; "
                f"cancel them with: scancel {' '.join(left)} ; or collect them later with: mlprun-report {sweep_dir} "
                "(rerunning the sweep waits for them)"
            )
        raise
    return [returns[i] for i in range(len(job_overrides))]
