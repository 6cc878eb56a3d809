"""Experiment tracking in MLflow: every train, pretrain, study and compare run where teams already look.

Off unless asked: `--track [URI]` on a command (`add_flags` + `from_args`), or the standard
`MLFLOW_TRACKING_URI` variable. `--track` alone logs to `sqlite:///<output's parent>/mlflow.db`
(artifacts in `mlartifacts/` beside it); a server URI (`http://host:5000`) serves a team. Without
either, nothing here runs and mlflow is never imported (it is the optional extra `medvit[tracking]`).

What goes where:
  * training (anything through the trainer and its RunLog: train, pretrain, study runs): the resolved
    config as params (flattened keys), step and epoch rows as metrics at their optimizer step, tags
    (backbone, patch, canvas, data fingerprint, medvit version, git commit), and at the end
    config.yaml, the metrics CSVs and train.log (+ checkpoints with `--track-checkpoints`);
  * evaluate: its metrics (test AUC with CI, ...) and figures on the run's own MLflow run, found
    through RUN_DIR/mlflow.json (so a tracked run's later evaluations land there too);
  * a study: one parent run (OUT/mlflow.json) with results.csv, fit.json, tables and figures, one
    child run per grid run; a resumed or skipped run reuses its MLflow run, never duplicates it;
  * compare: a new run with its page and compare.json, tagged with the compared runs' MLflow ids.

Only medvit config keys, ids, metrics and medvit's own files are logged (no DICOM header field).
MLflow's telemetry is switched off before it is imported; no model-registry call is made.
"""
from __future__ import annotations

import functools
import json
import math
import numbers
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medvit.errors import MedvitError

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
EXPERIMENT = "medvit"  # default experiment name
RECORD = "mlflow.json"  # in a run / study / compare folder: {"tracking_uri", "experiment_id", "run_id"}
DB_NAME, ARTIFACTS = "mlflow.db", "mlartifacts"
INSTALL = "pip install 'medvit[tracking]'"
FLUSH_S = 5.0  # buffered metrics go out at least this often (and at every epoch end)
MAX_PARAM = 6000  # MLflow's limit on a param value
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # a scheme: sqlite:, http:, file:, databricks ...
_KEY_BAD = re.compile(r"[^\w\-. /]")  # characters MLflow refuses in metric/param/tag keys


class TrackingError(MedvitError):
    """Tracking was asked for and cannot be done (mlflow missing, store unreachable)."""


@dataclass
class Tracking:
    """Where and what to track. Plain data: it travels to Ray workers as a dict (`asdict`)."""

    uri: str = ""  # "" = the default SQLite store beside the output folder
    checkpoints: bool = False  # also log checkpoints/{best,last}.pt (large)
    parent_run_id: str = ""  # a study's parent run
    run_name: str = ""  # default: the run folder's name
    params: dict = field(default_factory=dict)  # extra params (a study run's arm, point, seed)
    tags: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- command line

def add_flags(parser: Any, checkpoints: bool = True) -> None:
    """`--track [URI]` (and `--track-checkpoints`) on a command; pair with `from_args` in its run()."""
    parser.add_argument("--track", nargs="?", const="", default=None, metavar="URI",
                        help="log this run to MLflow: a tracking URI (http://host:5000, sqlite:///file.db); "
                             f"alone: sqlite:///<output's parent>/{DB_NAME}; also on with ${ENV_URI} "
                             f"(needs {INSTALL})")
    if checkpoints:
        parser.add_argument("--track-checkpoints", action="store_true",
                            help="with tracking: also log checkpoints/best.pt and last.pt as artifacts (large)")


def from_args(args: Any) -> Tracking | None:
    """The tracking a command was asked for (`--track [URI]`, else $MLFLOW_TRACKING_URI), or None.
    A value after a bare `--track` that is no URI (a key=value override, a run folder, a study
    name) is handed back to the command's positionals. Fails early when mlflow is missing."""
    value = getattr(args, "track", None)
    if value and not _URI.match(value):
        _give_back(args, value)
        value = ""
    env = os.environ.get(ENV_URI, "")
    if value is None and not env:
        return None
    require()
    return Tracking(uri=value or env, checkpoints=bool(getattr(args, "track_checkpoints", False)))


def _give_back(args: Any, value: str) -> None:
    if hasattr(args, "name") and getattr(args, "name") is None:  # `study --track NAME`
        args.name = value
    elif isinstance(getattr(args, "runs", None), list):  # `compare --track RUN_A RUN_B`
        args.runs.insert(0, value)
    elif isinstance(getattr(args, "overrides", None), list):  # `train --track key=value`
        args.overrides.insert(0, value)
    else:
        raise TrackingError(f"--track {value!r}: not a tracking URI (e.g. http://host:5000, sqlite:///mlflow.db)")


def require() -> Any:
    """mlflow, imported with its telemetry off; a one-line error naming the extra when missing."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # no network but the user's URI
    try:
        import mlflow
    except ImportError as err:
        raise TrackingError(f"experiment tracking needs mlflow, which is not installed ({err}): "
                            f"{INSTALL}") from None
    import logging

    for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def resolve_uri(uri: str, out: str | Path) -> str:
    """`uri`, or the default SQLite store in the output's parent folder; a relative SQLite path
    made absolute (Ray workers may start elsewhere)."""
    if not uri:
        return f"sqlite:///{Path(out).resolve().parent / DB_NAME}"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_absolute():
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


# ----------------------------------------------------------------------------- one MLflow run

class Tracker:
    """One MLflow run: metrics buffered and sent in batches, params, tags, artifacts, the end.
    A failure after the run started is one warning line, and tracking stops; the training goes on."""

    def __init__(self, client: Any, uri: str, run_id: str, experiment_id: str) -> None:
        self.client, self.uri, self.run_id, self.experiment_id = client, uri, run_id, experiment_id
        self.checkpoints = False
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self._broken = False

    def metrics(self, row: dict, step: int) -> None:
        """Every finite number of `row` (except `step`) as a metric at `step`."""
        from mlflow.entities import Metric

        if self._broken:
            return
        now = int(time.time() * 1000)
        self._buffer += [Metric(_key(k), float(v), now, int(step)) for k, v in row.items()
                         if k != "step" and _number(v)]
        if time.monotonic() - self._last_flush >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        batch, self._buffer, self._last_flush = self._buffer, [], time.monotonic()
        for i in range(0, len(batch), 1000):  # MLflow's batch limit
            self._call(self.client.log_batch, self.run_id, metrics=batch[i:i + 1000])

    def params(self, params: dict) -> None:
        """Params not logged yet (MLflow params are immutable; a resume may change a few: those
        become `resumed.<key>` tags)."""
        from mlflow.entities import Param, RunTag

        have = self._call(lambda: self.client.get_run(self.run_id).data.params) or {}
        values = {_key(k): _text(v)[:MAX_PARAM] for k, v in params.items()}
        new = [Param(k, v) for k, v in values.items() if k not in have]
        changed = [RunTag(f"resumed.{k}", v) for k, v in values.items() if k in have and have[k] != v]
        for i in range(0, len(new), 100):
            self._call(self.client.log_batch, self.run_id, params=new[i:i + 100])
        for i in range(0, len(changed), 100):
            self._call(self.client.log_batch, self.run_id, tags=changed[i:i + 100])

    def tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(_key(k), _text(v)[:MAX_PARAM]) for k, v in tags.items() if v not in (None, "")]
        for i in range(0, len(items), 100):
            self._call(self.client.log_batch, self.run_id, tags=items[i:i + 100])

    def artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        """Files (or folders) that exist, under artifact folder `folder` (None: the root)."""
        for p in map(Path, paths):
            if p.is_dir():
                self._call(self.client.log_artifacts, self.run_id, str(p), folder)
            elif p.is_file():
                self._call(self.client.log_artifact, self.run_id, str(p), folder)

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self._call(self.client.set_terminated, self.run_id, status)

    def _call(self, fn, *args, **kw):
        if self._broken:
            return None
        try:
            return fn(*args, **kw)
        except Exception as err:  # the store went away mid-run: say so once, keep training
            self._broken = True
            print(f"medvit: MLflow tracking stopped ({self.uri}, run {self.run_id}): "
                  f"{type(err).__name__}: {' '.join(str(err).split())[:200]}", file=sys.stderr, flush=True)
            return None


def open_run(uri: str, folder: str | Path, name: str, parent_run_id: str = "", reuse: bool = True,
             tags: dict | None = None, running: bool = True, create: bool = True) -> Tracker:
    """The MLflow run of `folder`: the one its mlflow.json names (same URI, still there) when
    `reuse`, set RUNNING again when `running`; else a new one when `create` (its id then written
    to folder/mlflow.json)."""
    mlflow = require()
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    folder = Path(folder)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        old = read_record(folder) if reuse else None
        if old and old["tracking_uri"] == uri and _alive(client, old["run_id"]):
            if running:
                client.update_run(old["run_id"], status="RUNNING")
            return Tracker(client, uri, old["run_id"], old["experiment_id"])
        if not create:
            raise TrackingError(f"{folder / RECORD}: its MLflow run is gone from {uri}")
        exp = (client.get_run(parent_run_id).info.experiment_id if parent_run_id else _experiment(client, uri))
        run_tags = {**(tags or {}), **({MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {})}
        run = client.create_run(exp, run_name=name, tags={k: _text(v) for k, v in run_tags.items()})
    except MedvitError:
        raise
    except Exception as err:
        raise TrackingError(f"MLflow at {uri}: {type(err).__name__}: {' '.join(str(err).split())[:300]}") from None
    from medvit.io import write_text

    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / RECORD, json.dumps({"tracking_uri": uri, "experiment_id": exp,
                                            "run_id": run.info.run_id}, indent=1) + "\n")
    return Tracker(client, uri, run.info.run_id, exp)


def read_record(folder: str | Path) -> dict | None:
    """folder/mlflow.json, or None (also for a torn or foreign file)."""
    path = Path(folder) / RECORD
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and {"tracking_uri", "run_id", "experiment_id"} <= set(rec) else None


def _recorded(folder: str | Path) -> str:
    """The store folder/mlflow.json names: a bare --track on a resumed run or study goes on there."""
    return (read_record(folder) or {}).get("tracking_uri", "")


def _alive(client: Any, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # deleted for good, or from another store
        return False


def _experiment(client: Any, uri: str) -> str:
    """$MLFLOW_EXPERIMENT_NAME or 'medvit', created on first use; for a SQLite store with its
    artifacts beside the database file (MLflow's default would be ./mlruns of whatever folder
    the process started in)."""
    name = os.environ.get(ENV_EXPERIMENT) or EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / ARTIFACTS).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by another process (a study's workers)
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise TrackingError(f"MLflow experiment {name!r} at {uri} is deleted: restore it "
                            f"(mlflow experiments restore) or set {ENV_EXPERIMENT}")
    return exp.experiment_id


# ----------------------------------------------------------------------------- training (RunLog)

def start_training(track: Tracking, run_dir: str | Path, cfg: Any, spec: dict, data_identity: dict) -> Tracker:
    """The MLflow run of a training run (reused on resume): config params, tags. Main rank only."""
    from medvit.config import config_to_dict, flatten

    uri = resolve_uri(track.uri or _recorded(run_dir), run_dir)
    method = getattr(getattr(cfg, "pretrain", None), "method", "")  # a self-supervised objective: `medvit pretrain`
    t = open_run(uri, run_dir, track.run_name or Path(run_dir).name, track.parent_run_id,
                 tags={"medvit_command": "pretrain" if method else "train", "objective": method or "supervised"})
    t.checkpoints = track.checkpoints
    t.params({**flatten(config_to_dict(cfg)), **track.params})
    t.tags({**train_tags(cfg, spec, data_identity), **track.tags})
    return t


def finish_training(t: Tracker, run_dir: str | Path, summary: dict | None, status: str = "FINISHED") -> None:
    """The run's files and figures as artifacts (checkpoints when asked), the stop reason, the end status."""
    run_dir = Path(run_dir)
    if summary:
        t.tags({"stop_reason": summary.get("stop_reason")})
    t.flush()
    t.artifacts([run_dir / n for n in ("config.yaml", "metrics_step.csv", "metrics_epoch.csv", "train.log")]
                + sorted(run_dir.glob("*.png")))  # e.g. pretrain's reconstruction figure
    if t.checkpoints:
        t.artifacts([run_dir / "checkpoints" / "best.pt", run_dir / "checkpoints" / "last.pt"], "checkpoints")
    t.end(status)


def train_tags(cfg: Any, spec: dict, data_identity: dict) -> dict:
    """backbone, patch, canvas, data kind and fingerprint, medvit version, git commit."""
    from medvit import __version__

    name = (spec or {}).get("name") or cfg.model.backbone
    patch = (spec or {}).get("kwargs", {}).get("patch_size") or cfg.model.patch_size or _default_patch(name)
    ident = {k: v for k, v in (data_identity or {}).items() if k != "dir"}  # a folder moved is the same data
    fingerprint = ident.get("split_sha1") or _sha1(json.dumps(ident, sort_keys=True, default=str))
    return {"backbone": name, "patch": patch, "canvas": _canvas(cfg.data.image_size),
            "data_kind": cfg.data.kind, "data_fingerprint": fingerprint, "medvit_version": __version__,
            "mlflow.source.git.commit": git_commit()}


# ----------------------------------------------------------------------------- evaluate

def log_evaluation(run_dir: str | Path, report: dict, out: str | Path | None = None, step: int = 0) -> None:
    """Evaluate's metrics (test_*), `scored_on` and figures on the run's MLflow run, when the run
    folder has one (mlflow.json); otherwise nothing, and mlflow is not imported."""
    t = reopen(run_dir, "evaluate metrics")
    if t is None:
        return
    t.metrics(eval_metrics(report), step)
    t.tags({"scored_on": report.get("split"), "scored_checkpoint": Path(str(report.get("checkpoint", ""))).name})
    if out is not None:
        t.artifacts([Path(out) / "metrics.json", *sorted(Path(out).glob("*.png"))], "eval")
    t.flush()


def log_files(run_dir: str | Path, paths: list, folder: str | None = None) -> None:
    """Files made after training (e.g. `medvit pretrain`'s figures) as artifacts of the run's
    MLflow run, when the run folder has one (mlflow.json); otherwise nothing."""
    t = reopen(run_dir, "files")
    if t is not None:
        t.artifacts(list(paths), folder)


def reopen(run_dir: str | Path, what: str) -> Tracker | None:
    """The MLflow run RUN_DIR/mlflow.json names, its status left as training left it; None (and
    mlflow not imported) without that file; None and one warning line when the store is away or
    the run is gone (what is on disk must not be lost to that, and no run is ever created here)."""
    rec = read_record(run_dir)
    if rec is None:
        return None
    try:
        return open_run(rec["tracking_uri"], run_dir, Path(run_dir).name, running=False, create=False)
    except TrackingError as err:
        print(f"medvit: {what} not logged to MLflow: {err}", file=sys.stderr, flush=True)
        return None


def eval_metrics(report: dict) -> dict:
    """Evaluate's numbers as flat test_* metrics (named test_* whatever was scored: the
    `scored_on` tag says which split, as results.csv's column does)."""
    out = {k: report.get(k) for k in ("n", "accuracy", "loss", "auc", "pf1", "best_f1", "auc_macro_ovr")}
    ci = report.get("auc_ci") or [None, None]
    out.update(auc_ci_lo=ci[0], auc_ci_hi=ci[1])
    for name, short in (("sensitivity_at_specificity", "sens_at_spec"), ("specificity_at_sensitivity", "spec_at_sens")):
        out.update({f"{short}_{k}": v for k, v in (report.get(name) or {}).items()})
    at = report.get("at_checkpoint_threshold") or {}
    out.update({f"threshold_{k}": at.get(k) for k in ("sensitivity", "specificity", "f1")})
    for how, m in (report.get("per_breast") or {}).items():
        if isinstance(m, dict):
            out.update({f"breast_{how}_{k}": m.get(k) for k in ("auc", "pf1")})
    return {f"test_{k}": v for k, v in out.items() if _number(v)}


# ----------------------------------------------------------------------------- studies

def start_study(track: Tracking | None, out: str | Path, name: str,
                settings: dict) -> tuple[Tracker | None, dict | None]:
    """The study's parent run (OUT/mlflow.json, reused on restart) and the dict each grid run's
    payload carries (`child_tracking` turns it back into a Tracking in the Ray worker); (None, None)
    without tracking."""
    if track is None:
        return None, None
    uri = resolve_uri(track.uri or _recorded(out), out)
    t = open_run(uri, out, f"study-{name}-{Path(out).name}", tags={"medvit_command": "study", "study": name})
    t.params({f"study.{k}": v for k, v in settings.items()})
    t.tags({"medvit_version": _version(), "mlflow.source.git.commit": git_commit()})
    return t, asdict(Tracking(uri=uri, checkpoints=track.checkpoints, parent_run_id=t.run_id))


def child_tracking(run: dict) -> Tracking | None:
    """A study run's Tracking from its payload: a child of the study's run, named by its run id,
    with arm / axis / point / noise / seed / group as params."""
    if not run.get("track"):
        return None
    t = Tracking(**run["track"])
    t.run_name = run["run_id"]
    t.params = {k: run.get(k) for k in ("arm", "axis", "point", "noise", "seed", "group")
                if run.get(k) not in (None, "")}
    t.tags = {"study": run["study"], "study_run_id": run["run_id"]}
    return t


def finish_study(t: Tracker | None, out: str | Path, rows: list[dict], status: str = "FINISHED") -> None:
    """Run counts, results.csv, fit.json, table, figures on the study's parent run; its end."""
    if t is None:
        return
    out = Path(out)
    t.metrics({"runs": len(rows), "runs_ok": sum(r.get("status") == "ok" for r in rows),
               "runs_failed": sum(r.get("status") == "failed" for r in rows)}, 0)
    files = [out / n for n in ("results.csv", "curves.csv", "table.md", "fit.json", "study.yaml")]
    t.artifacts(files + sorted(out.glob("*.png")))
    t.end(status)


# ----------------------------------------------------------------------------- compare

def log_compare(track: Tracking, out: str | Path, result: dict) -> str:
    """A new MLflow run with the page, compare.json and figures, tagged with the compared runs'
    MLflow run ids. `--track` alone: the store the compared runs share, else the default one.
    Returns the new run id."""
    run_dirs = [e["run_dir"] for e in result.get("runs", [])]
    records = [read_record(d) for d in run_dirs]
    uris = {r["tracking_uri"] for r in records if r}
    uri = track.uri or (uris.pop() if len(uris) == 1 else resolve_uri("", out))
    t = open_run(resolve_uri(uri, out), out, f"compare-{Path(out).resolve().name}", reuse=False,
                 tags={"medvit_command": "compare"})
    names = [e["name"] for e in result.get("runs", [])]
    t.tags({"compared_run_ids": ",".join(r["run_id"] for r in records if r),
            **{f"compared.{n}": (r or {}).get("run_id", "untracked") for n, r in zip(names, records)},
            "scored_on": result.get("split"), "medvit_version": _version(),
            "mlflow.source.git.commit": git_commit()})
    t.params({"split": result.get("split"), "n": result.get("n"), "n_boot": result.get("n_boot"),
              "seed": result.get("seed"), "runs": ",".join(names)})
    for entry in result.get("runs", []):
        t.metrics({f"{entry['name']}.{k}": entry.get(k) for k in ("auc", "accuracy", "brier", "ece")}, 0)
    out = Path(out)  # the page, compare.json and this compare's own figures: never the rest of the folder
    t.artifacts([out / "index.html", out / "compare.json"])
    figures = [out / f for f in result.get("figures", [])]
    t.artifacts([f for f in figures if f.parent == out])
    t.artifacts([f for f in figures if f.parent.name == "gallery"], "gallery")
    t.end("FINISHED")
    return t.run_id


# ----------------------------------------------------------------------------- helpers

@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """medvit's commit when it runs from a git checkout, else None."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def _version() -> str:
    from medvit import __version__

    return __version__


def _default_patch(backbone: str) -> int | None:
    """A ViT's own patch size when the config leaves it to the builder; None for a CNN."""
    from medvit.models import backbone_default, backbone_kind

    try:
        return backbone_default(backbone, "patch_size") if backbone_kind(backbone) == "vit" else None
    except Exception:  # a backbone the registry does not describe: no patch tag
        return None


def _canvas(size: Any) -> str | None:
    if size is None:
        return None
    from medvit.canvas import size_text

    try:
        return size_text(size)
    except ValueError:
        return str(size)


def _sha1(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v)


def _key(k: Any) -> str:
    return _KEY_BAD.sub("_", str(k))
