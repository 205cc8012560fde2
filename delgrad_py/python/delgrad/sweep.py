"""Sweeps on Ray: every trial is an ordinary pipeline run, gathered into one Parquet table.

``run_sweep(spec)`` expands a sweep file (:mod:`delgrad.sweep_spec`) into trials and runs each
as a Ray task (local Ray on this machine's cores by default, a cluster when an address is
given). Sweep directory::

    spec.toml            a copy of the sweep file
    trials/<trial>/      trial.json (its result row; status "ok" marks it finished),
                         error.txt (a failed trial's traceback) and run/, the trial's ordinary
                         run directory (``delgrad run --out``)
    results.parquet      one row per trial (rewritten as trials finish)
    sweep.json           wall time and counts of the last invocation
    report.md, accuracy_vs_params.png

Resume: a trial whose ``trial.json`` says "ok" is not run again; a trial that failed is retried;
an interrupted trial continues from its last checkpoint (``pipeline.run`` resumes in place).
On a cluster the sweep directory must be on a file system every node sees.

Ray is an optional extra (``pip install 'delgrad[sweep]'``) and is imported only here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from delgrad.ray_cluster import MissingRayError, RayConnectionError, check_reachable
from delgrad.ray_cluster import import_ray as _import_ray
from delgrad.sweep_spec import SweepSpec, SweepSpecError, Trial, load_spec, toml_value

__all__ = [
    "MissingRayError",
    "RayConnectionError",
    "SweepResult",
    "SweepSpecError",
    "import_ray",
    "run_sweep",
    "run_trial",
]

RAY_HINT = (
    "delgrad sweep needs Ray, an optional extra: pip install 'delgrad[sweep]' "
    "(from a checkout: pip install -e '.[sweep]', or make install)"
)
# Ray reserves 30 % of memory for its object store by default; trials return small rows, and
# this machine is shared, so a local Ray gets a small store.
_LOCAL_OBJECT_STORE_BYTES = 128 * 2**20


def import_ray():
    """The ``ray`` module, or :class:`MissingRayError` with install instructions."""
    return _import_ray(RAY_HINT)


# --- one trial (runs inside a Ray worker) ---------------------------------------------------


def _metrics_summary(run_dir: Path) -> dict[str, Any]:
    """Accuracies from the run's per-epoch log. ``test_acc_best_val`` is the test accuracy of the
    epoch with the best validation accuracy (the first such epoch, as the trainer keeps it): with
    ``train.select_on = "validation"`` that is the saved model. ``test_acc_final``: last epoch."""
    m = pl.read_parquet(run_dir / "metrics.parquet")
    best = int(m["validation_acc"].arg_max())  # first maximum, like Trainer's strict ">"
    return {
        "epochs": int(m["epoch"][-1]),
        "best_epoch": int(m["epoch"][best]),
        "val_acc_best": float(m["validation_acc"][best]),
        "test_acc_best_val": float(m["test_acc"][best]),
        "test_acc_final": float(m["test_acc"][-1]),
        "train_acc_final": float(m["train_acc"][-1]),
    }


def run_trial(base: str, overrides: list[str], trial_dir: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Runs one trial as ``delgrad run base --set ... --out trial_dir``; never raises.

    Returns its result row and writes it to ``trial_dir/trial.json`` (last, so that a trial
    with an "ok" trial.json is complete). Errors become ``status = "failed"`` with the message.
    """
    from delgrad import pipeline
    from delgrad.model import Model

    out = Path(trial_dir)
    out.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {
        "trial": name,
        "params": params,
        "status": "failed",
        "error": None,
        "node": socket.gethostname(),
        "rayon_threads": os.environ.get("RAYON_NUM_THREADS"),
    }
    t0 = time.perf_counter()
    try:
        run_dir = pipeline.run(base, list(overrides), out=out / "run", progress=False, say=lambda text: None)
        row.update(_metrics_summary(run_dir))
        row["n_params"] = Model.load(run_dir).network.n_parameters()
        row["status"] = "ok"
        (out / "error.txt").unlink(missing_ok=True)
    except Exception as e:  # a failed trial is a result, not the end of the sweep
        row["error"] = f"{type(e).__name__}: {e}"
        (out / "error.txt").write_text(traceback.format_exc())
    row["wall_s"] = time.perf_counter() - t0
    tmp = out / "trial.json.tmp"
    tmp.write_text(json.dumps(row, indent=1))
    tmp.replace(out / "trial.json")
    return row


def finished_row(trial_dir: Path) -> dict[str, Any] | None:
    """The stored result of a finished trial, or None if it has to run (again)."""
    try:
        row = json.loads((trial_dir / "trial.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return row if row.get("status") == "ok" else None


# --- the table ------------------------------------------------------------------------------

RESULT_COLUMNS = [
    "trial",
    "status",
    "n_params",
    "test_acc_best_val",
    "test_acc_final",
    "val_acc_best",
    "best_epoch",
    "epochs",
    "train_acc_final",
    "wall_s",
    "reused",
    "error",
    "node",
    "run_dir",
]


def results_table(
    spec: SweepSpec, trials: list[Trial], rows: dict[str, dict[str, Any]], sweep_dir: Path
) -> pl.DataFrame:
    """One row per trial that has a result: the axis values (one column per dotted key), then
    :data:`RESULT_COLUMNS`. Trials without a result yet (still running) are left out."""
    records = []
    text_axes = _mixed_axes(spec, trials)
    for t in trials:
        r = rows.get(t.name)
        if r is None:
            continue
        rec: dict[str, Any] = {k: (toml_value(v) if k in text_axes else v) for k, v in t.params.items()}
        rec.update({c: r.get(c) for c in RESULT_COLUMNS})
        rec["reused"] = bool(r.get("reused", False))
        rec["run_dir"] = str((sweep_dir / "trials" / t.name / "run").relative_to(sweep_dir))
        records.append(rec)
    schema = {
        "trial": pl.Utf8,
        "status": pl.Utf8,
        "n_params": pl.Int64,
        "test_acc_best_val": pl.Float64,
        "test_acc_final": pl.Float64,
        "val_acc_best": pl.Float64,
        "best_epoch": pl.Int64,
        "epochs": pl.Int64,
        "train_acc_final": pl.Float64,
        "wall_s": pl.Float64,
        "reused": pl.Boolean,
        "error": pl.Utf8,
        "node": pl.Utf8,
        "run_dir": pl.Utf8,
    }
    if not records:
        return pl.DataFrame(schema={k: pl.Utf8 for k in spec.axes} | schema)
    return pl.DataFrame(records, schema_overrides=schema, infer_schema_length=None)


def _mixed_axes(spec: SweepSpec, trials: list[Trial]) -> set[str]:
    """Axes whose values do not share one column type (e.g. ``0.005`` and ``[0.005, 0.001]``);
    their column holds the values as the TOML text of ``--set``."""
    mixed = set()
    for k in spec.axes:
        kinds = {type(t.params[k]).__name__ for t in trials}
        if len(kinds - {"int"} if "float" in kinds else kinds) > 1:
            mixed.add(k)
    return mixed


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".parquet.tmp")
    df.write_parquet(tmp, compression="zstd")
    tmp.replace(path)  # readers never see a half-written table


# --- the sweep ------------------------------------------------------------------------------


@dataclass
class SweepResult:
    sweep_dir: Path
    table: pl.DataFrame
    wall_s: float
    ran: int  # trials run by this invocation
    reused: int  # trials skipped because an earlier invocation finished them


def _init_ray(ray, address: str | None) -> bool:
    """Connects to (or starts) Ray; True if this call started it and so must shut it down."""
    if ray.is_initialized():  # e.g. a test or notebook that set Ray up itself
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayConnectionError(f"cannot join the Ray cluster at {address!r}: {e}") from None
    else:
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=_LOCAL_OBJECT_STORE_BYTES,
        )
    return True


def run_sweep(
    spec_path: str | Path,
    *,
    address: str | None = None,
    max_parallel: int | None = None,
    out: str | Path | None = None,
    cpus_per_trial: float | None = None,
    progress: bool = True,
) -> SweepResult:
    """Runs (or resumes) a sweep and writes its table and report; see the module docstring.

    ``address``: None starts a local Ray on this machine's cores; ``"auto"`` or
    ``"ray://host:10001"`` joins a running cluster. ``max_parallel`` caps the trials in flight
    (default: as many as Ray's CPUs allow at ``cpus_per_trial`` each).
    """
    ray = import_ray()
    spec = load_spec(spec_path)
    if address:
        check_reachable(address)
    if max_parallel is not None and max_parallel < 1:
        raise SweepSpecError(f"max_parallel must be >= 1, got {max_parallel}")
    cpus = float(cpus_per_trial or spec.cpus_per_trial)
    sweep_dir = Path(out or spec.out).resolve()
    (sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec.path, sweep_dir / "spec.toml")
    trials = spec.trials()

    rows: dict[str, dict[str, Any]] = {}
    for t in trials:
        done = finished_row(sweep_dir / "trials" / t.name)
        if done is not None:
            rows[t.name] = {**done, "reused": True}
    todo = [t for t in trials if t.name not in rows]
    reused = len(rows)

    from delgrad.sweep_progress import SweepProgress

    t0 = time.perf_counter()
    with SweepProgress(progress, len(trials), reused) as bar:
        if todo:
            _run_on_ray(ray, spec, todo, sweep_dir, rows, trials, address, max_parallel, cpus, bar)
    wall = time.perf_counter() - t0

    table = results_table(spec, trials, rows, sweep_dir)
    _write_parquet(table, sweep_dir / "results.parquet")
    summary = {
        "spec": str(spec.path),
        "pipeline": str(spec.pipeline),
        "trials": len(trials),
        "ok": int((table["status"] == "ok").sum()),
        "failed": int((table["status"] == "failed").sum()),
        "ran": len(todo),
        "reused": reused,
        "wall_s": wall,
        "address": address or "local",
        "max_parallel": max_parallel,
        "cpus_per_trial": cpus,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    (sweep_dir / "sweep.json").write_text(json.dumps(summary, indent=1))
    from delgrad.sweep_report import write_report

    write_report(sweep_dir, spec, table, summary)
    return SweepResult(sweep_dir, table, wall, len(todo), reused)


def _run_on_ray(
    ray,
    spec: SweepSpec,
    todo: list[Trial],
    sweep_dir: Path,
    rows: dict[str, dict[str, Any]],
    trials: list[Trial],
    address: str | None,
    max_parallel: int | None,
    cpus: float,
    bar,
) -> None:
    started = _init_ray(ray, address)
    try:
        # Each trial's Rust core runs a rayon pool; sized to the trial's CPUs so parallel trials
        # do not oversubscribe the cores Ray gave them.
        threads = str(max(1, int(cpus)))
        # Ray retries a task only when its worker or node dies (run_trial itself never raises);
        # a retried trial resumes from its checkpoint.
        task = ray.remote(num_cpus=cpus, runtime_env={"env_vars": {"RAYON_NUM_THREADS": threads}})(run_trial)
        queue = list(todo)
        pending: dict[Any, Trial] = {}
        try:
            while queue or pending:
                while queue and (max_parallel is None or len(pending) < max_parallel):
                    t = queue.pop(0)
                    ref = task.remote(
                        str(spec.pipeline), list(t.overrides), str(sweep_dir / "trials" / t.name), t.name, t.params
                    )
                    pending[ref] = t
                    bar.started(t)
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    t = pending.pop(ref)
                    try:
                        row = ray.get(ref)
                    except Exception as e:  # the worker itself died (out of memory, node lost)
                        row = {"trial": t.name, "status": "failed", "error": f"{type(e).__name__}: {e}"}
                    rows[t.name] = row
                    bar.finished(t, row)
                    # The table is rewritten as trials finish: an interrupted sweep leaves a table.
                    _write_parquet(results_table(spec, trials, rows, sweep_dir), sweep_dir / "results.parquet")
        finally:
            for ref in pending:  # Ctrl-C: stop what is running; checkpoints make it resumable
                ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()
