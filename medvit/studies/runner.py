"""The sweep engine: every run of a study is one Ray task (`execute_run`), asking for its CPU/GPU
share; finished runs are skipped on restart, interrupted ones resume, failed ones become rows.

Ray core tasks rather than Ray Tune: a study is a fixed grid of independent runs, each already a
complete, resumable training job (the one trainer, with its own checkpoints, stopping rules and
run directory). Tune's search algorithms, trial schedulers and its own checkpoint/experiment
layout would duplicate that machinery; `ray.remote(...).options(num_cpus, num_gpus)` plus
`ray.wait` is all the fan-out needs, on a laptop or on every GPU of a cluster.
"""
from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from medvit.errors import shorten
from medvit.io import write_text
from medvit.studies.grid import RunSpec, StudySettings

RESULT = "result.json"  # the `done` marker of a run: written last, atomically
TRAINED = "trained.json"  # training finished (scoring may still be missing)


def base_row(run: dict) -> dict:
    return {"study": run["study"], "arm": run["arm"], "group": run.get("group", ""), "axis": run["axis"],
            "point": run["point"],
            "noise": run["noise"], "seed": run["seed"], "run_id": run["run_id"], "status": "", "error": ""}


def execute_run(run: dict) -> dict:
    """Train (or resume) one run with the one trainer, score its test split once, return its row.
    Runs inside a Ray worker; plain dicts in and out."""
    t0 = time.perf_counter()
    run_dir = Path(run["config"]["train"]["out"])
    done = run_dir / RESULT
    if done.is_file():
        return json.loads(done.read_text())
    row = base_row(run)
    try:
        row.update(_train_and_score(run, run_dir))
        row["status"] = "ok"
    except Exception as err:  # a failed run is a row; the study goes on
        row.update(status="failed", error=shorten(f"{type(err).__name__}: {err}", 300))
    row["run_wall_s"] = round(time.perf_counter() - t0, 3)
    row["host"] = socket.gethostname()
    row["run_dir"] = str(run_dir)
    if row["status"] == "ok":
        write_text(done, json.dumps(row, indent=1) + "\n")
    else:
        write_text(run_dir / "error.json", json.dumps(row, indent=1) + "\n")
    return row


def _train_and_score(run: dict, run_dir: Path) -> dict:
    import torch

    from medvit.config import config_from_dict
    from medvit.evaluate import evaluate
    from medvit.runs import load_run
    from medvit.tracking import child_tracking
    from medvit.train import fit

    torch.set_num_threads(max(1, int(run["threads"])))
    cfg = config_from_dict(run["config"])
    trained = run_dir / TRAINED
    if trained.is_file():  # trained before an interruption during scoring
        summary = json.loads(trained.read_text())
    else:
        resume = (run_dir / "checkpoints" / "last.pt").is_file()  # interrupted: the trainer's exact resume
        t = time.perf_counter()
        summary = fit(cfg, run_dir, resume=resume, track=child_tracking(run))  # MLflow: a child of the study's run
        summary["fit_wall_s"] = time.perf_counter() - t
        summary["resumed"] = resume
        write_text(trained, json.dumps(summary, indent=1) + "\n")
    t = time.perf_counter()
    loaded = load_run(run_dir, run["checkpoint"], cfg.train.device)  # the one load of the scored checkpoint
    report = evaluate(loaded, n_boot=run["n_boot"], seed=0, plots=False, out=run_dir / "eval")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the worker is reused by the next run
    score = time.perf_counter() - t
    seconds = loaded.training_seconds
    return {**_train_columns(run_dir, summary), "train_wall_s": None if seconds is None else round(seconds, 3),
            **_test_columns(report), "device": str(loaded.device), "params": loaded.params,
            "fit_wall_s": round(summary.get("fit_wall_s", float("nan")), 3), "score_wall_s": round(score, 3)}


def _train_columns(run_dir: Path, summary: dict) -> dict:
    import pandas as pd

    out = {"stop_reason": summary["stop_reason"], "epochs": summary["epoch"], "steps": summary["step"],
           "train_error": None, "train_loss": None, "train_accuracy": None,
           "val_accuracy": None, "val_loss": None, "n_train": None, "resumed": summary.get("resumed", False)}
    log = run_dir / "metrics_epoch.csv"
    if log.is_file() and log.stat().st_size:
        epochs = pd.read_csv(log)
        if len(epochs):
            last = epochs.iloc[-1]
            out.update(train_error=float(last["train_error"]), train_loss=float(last["train_loss"]),
                       train_accuracy=1 - float(last["train_error"]))
            val = epochs.dropna(subset=["val_loss"]) if "val_loss" in epochs else epochs.iloc[:0]
            if len(val):
                out.update(val_accuracy=float(val.iloc[-1]["val_accuracy"]), val_loss=float(val.iloc[-1]["val_loss"]))
    return out


def _test_columns(report: dict) -> dict:
    ci = report.get("auc_ci") or [None, None]
    acc = report.get("accuracy")
    return {"test_accuracy": acc, "test_error": None if acc is None else 1 - acc, "test_loss": report.get("loss"),
            "test_auc": report.get("auc"), "test_auc_lo": ci[0], "test_auc_hi": ci[1], "n_test": report.get("n"),
            "scored_on": report.get("split"), "checkpoint": Path(report["checkpoint"]).name,
            "image_size": report.get("image_size"), "canvas": report.get("canvas")}


# ------------------------------------------------------------------------------------- driver

@contextlib.contextmanager
def ray_session(address: str | None, local_cpus: int = 0) -> Iterator[Any]:
    """An existing Ray connection as is; else join `address`, or start a local Ray (shut down after).

    Token authentication (Ray 2.60): `ray start --head` turns it on when RAY_AUTH_MODE=token or a
    token exists (~/.ray/auth_token, which any local `ray.init()` writes). A driver joining by
    address is then admitted only with RAY_AUTH_MODE=token and the head's token (RAY_AUTH_TOKEN,
    the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token); without them Ray raises
    AuthenticationError (mode on, no token) or retries for ~20 s logging InvalidAuthToken and
    raises ConnectionError. Both become one MedvitError naming the address and the fix."""
    import ray

    from medvit.errors import MedvitError

    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # Ray before token authentication (pyproject allows ray>=2.9): nothing to catch
        class AuthenticationError(Exception):
            pass

    if ray.is_initialized():
        yield ray
        return
    env = {"env_vars": {"TQDM_DISABLE": "1"}}  # no progress bars from workers: the driver prints one line a run
    if address:
        token = ("set RAY_AUTH_MODE=token and the head's token (`ray get-auth-token` on the head) as RAY_AUTH_TOKEN, "
                 "in a file named by RAY_AUTH_TOKEN_PATH or in ~/.ray/auth_token, for this command and for "
                 "`ray start` on every node (README: Seed studies, cluster)")
        try:
            ray.init(address=address, runtime_env=env)
        except AuthenticationError as e:
            raise MedvitError(f"Ray cluster at {address}: token authentication is on but this process has no "
                              f"token; {token}") from e
        except ConnectionError as e:
            raise MedvitError(f"cannot join the Ray cluster at {address} ({e}): if Ray logged InvalidAuthToken "
                              f"above, the cluster uses token authentication: {token}; otherwise check that "
                              "`ray start --head` runs there and the port is reachable") from e
    else:
        ray.init(num_cpus=local_cpus or None, include_dashboard=False, runtime_env=env)
    try:
        yield ray
    finally:
        ray.shutdown()


def _resources(ray, s: StudySettings) -> tuple[float, float]:
    gpus = s.gpus_per_run
    if gpus == "auto":
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return float(s.cpus_per_run), float(gpus)


def payload(run: RunSpec, s: StudySettings, track: dict | None = None) -> dict:
    return {"study": run.study, "arm": run.arm, "group": run.group, "axis": run.axis, "point": run.point,
            "noise": run.noise,
            "seed": run.seed, "run_id": run.run_id, "config": run.config, "checkpoint": s.checkpoint,
            "n_boot": s.n_boot, "threads": max(1, int(s.cpus_per_run)),
            "track": track}  # MLflow URI + the study's parent run id (medvit.tracking.start_study), or None


def run_grid(runs: list[RunSpec], s: StudySettings, address: str | None = None,
             on_row: Callable[[list[dict]], None] | None = None, log: Callable[[str], None] = print,
             track: dict | None = None) -> list[dict]:
    """Execute the runs not done yet on Ray; rows in grid order (done runs read from their marker).
    `track`: each run's MLflow tracking (see `payload`)."""
    if not runs:
        from medvit.errors import ConfigError

        raise ConfigError("the study has no runs (label-efficiency: give --pretrained RUN_DIR[,RUN_DIR2], "
                          "`medvit pretrain` run folders)")
    rows: dict[str, dict] = {}
    for run in runs:
        done = run.run_dir / RESULT
        if done.is_file():
            rows[run.run_id] = json.loads(done.read_text())
    todo = [r for r in runs if r.run_id not in rows]
    log(f"{len(runs)} runs: {len(rows)} already done (skipped), {len(todo)} to run")
    ordered = lambda: [rows[r.run_id] for r in runs if r.run_id in rows]  # noqa: E731
    if not todo:
        return ordered()
    with ray_session(address, s.local_cpus) as ray:
        cpus, gpus = _resources(ray, s)
        # max_calls=0: reuse workers for GPU tasks too (Ray's default for GPU tasks is a fresh
        # process per task, seconds of torch/CUDA start-up per run); execute_run frees the cache.
        task = ray.remote(max_calls=0)(execute_run).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        pending = {task.remote(payload(r, s, track)): r for r in todo}
        t0 = time.perf_counter()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except Exception as err:  # the worker died (OOM, killed): still a row
                row = {**base_row(payload(run, s)), "status": "failed",
                       "error": shorten(f"{type(err).__name__}: {err}", 300), "run_dir": str(run.run_dir)}
            rows[run.run_id] = row
            log(f"[{len(rows)}/{len(runs)}] {run.run_id}: {row['status']}"
                f"{' ' + row['error'] if row['error'] else ''} ({time.perf_counter() - t0:.0f} s)")
            if on_row:
                on_row(ordered())
    return ordered()
