"""The ``delgrad`` command line."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="delgrad", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a pipeline: encode -> train -> evaluate -> report")
    r.add_argument("pipeline", help="pipeline TOML, e.g. pipelines/yinyang_synaptic.toml")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pipeline key, e.g. --set train.epochs=10 (repeatable)",
    )
    r.add_argument("--out", help="run directory (default runs/<name>-seed<seed>); an interrupted run there resumes")
    r.add_argument("--restart", action="store_true", help="discard the run in --out (if any) and start again")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="data-parallel training on N Ray workers (= --set distributed.workers=N); the same results as 1",
    )
    r.add_argument(
        "--address",
        help="Ray cluster for the workers ('auto', 'ray://HOST:PORT' or 'HOST:PORT'; = --set distributed.address=...); "
        "default: a local Ray",
    )
    e = sub.add_parser("evaluate", help="re-evaluate a finished run directory and rewrite its report")
    e.add_argument("run_dir")
    x = sub.add_parser(
        "export-nir", help="write a run directory's trained network as a NIR graph (pip install 'delgrad[nir]')"
    )
    x.add_argument("run_dir")
    x.add_argument("out", help="NIR file to write (HDF5), e.g. model.nir")
    i = sub.add_parser(
        "inspect",
        help="plot one sample of a finished run: input raster, every layer's spikes, exact membrane potentials",
    )
    i.add_argument("run_dir")
    i.add_argument("--sample", type=int, required=True, metavar="K", help="sample index within the split")
    i.add_argument(
        "--neurons",
        metavar="LAYER:NEURON,...",
        help="neurons whose membrane potential to draw, e.g. 0:3,1:2 or readout:4 (layer k is fed by "
        "network.layers[k]; -1 is the last layer); default: the true and predicted output units and the "
        "first or busiest neuron of each hidden layer",
    )
    i.add_argument("--split", default="test", choices=["train", "validation", "test"])
    i.add_argument("--out", metavar="FILE.png", help="figure to write (default: RUN/plots/inspect-SPLIT-K.png)")
    s = sub.add_parser("sweep", help="run a sweep of pipeline runs on Ray (pip install 'delgrad[sweep]')")
    s.add_argument("spec", help="sweep TOML, e.g. pipelines/sweeps/yinyang_delays.toml")
    s.add_argument(
        "--address",
        help="Ray cluster to join ('auto' or 'ray://host:10001'); default: a local Ray on this machine's cores",
    )
    s.add_argument("--max-parallel", type=int, metavar="N", help="at most N trials at once")
    s.add_argument(
        "--cpus-per-trial",
        type=float,
        metavar="C",
        help="CPUs (and rayon threads) per trial; default from the sweep file, else 1",
    )
    s.add_argument("--out", help="sweep directory (default: the sweep file's 'out'); re-running resumes")
    s.add_argument("--dry-run", action="store_true", help="list the trials and exit")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    # --- hardware hook: Fast&Deep import and chip calibration (delgrad.fastanddeep, delgrad.calibrate)
    f = sub.add_parser(
        "import-fastanddeep",
        help="import a Fast&Deep / DelGrad experiment directory (config.yaml + parameters) as a run directory",
    )
    f.add_argument("experiment_dir", help="e.g. fastAndDeep/experiment_pretrained/<name>/epoch_300")
    f.add_argument("out", help="run directory to create (must not exist, or be empty)")
    c = sub.add_parser(
        "calibrate", help="fit a chip profile (threshold factors, time offset) to recorded output spikes"
    )
    c.add_argument("run_dir", help="run directory holding the model (model/)")
    c.add_argument("--inputs", required=True, help="Parquet spikes played into the network's inputs")
    c.add_argument("--recorded", required=True, help="Parquet spikes of the output layer, recorded on the chip")
    c.add_argument("--out", required=True, help="the calibrated chip profile (JSON) to write")
    c.add_argument("--base", default="delgrad", help="the chip profile the calibration refines (default delgrad)")
    c.add_argument("--steps", type=int, default=400, help="optimiser steps")
    # --- end of hardware hook
    args = p.parse_args(argv)

    if args.cmd in ("import-fastanddeep", "calibrate"):
        return _hardware_command(args)
    if args.cmd == "sweep":
        return _sweep(args)
    if args.cmd == "export-nir":
        return _export_nir(args.run_dir, args.out)
    if args.cmd == "inspect":
        return _inspect(args)

    from delgrad import pipeline
    from delgrad.config import ConfigError
    from delgrad.data.user import DataError
    from delgrad.distributed import WorkerError
    from delgrad.hardware.client import HardwareUnavailable
    from delgrad.ray_cluster import MissingRayError, RayConnectionError
    from delgrad.rundir import RunDirError

    try:
        if args.cmd == "run":
            overrides = list(args.overrides)
            if args.workers is not None:
                overrides.append(f"distributed.workers={args.workers}")
            if args.address is not None:
                overrides.append(f"distributed.address={json.dumps(args.address)}")
            run_dir = pipeline.run(
                args.pipeline,
                overrides,
                args.out,
                progress=not args.quiet,
                restart=args.restart,
            )
            print(f"run directory: {run_dir}")
            print((run_dir / "report.md").read_text().split("\n## ")[0])
        elif args.cmd == "evaluate":
            res = pipeline.evaluate_run(args.run_dir)
            for k, v in res.items():
                print(f"{k:>16}: {v:.4f}")
    except (ConfigError, RunDirError, DataError, FileNotFoundError) as e:  # the user's input: one line
        print(f"delgrad {args.cmd}: {e}", file=sys.stderr)
        return 2
    except HardwareUnavailable as e:  # a dead endpoint is one line, not a traceback
        print(f"delgrad {args.cmd}: {e.message}", file=sys.stderr)
        return 2
    except (MissingRayError, RayConnectionError, WorkerError) as e:  # no Ray, no cluster, no workers
        print(f"delgrad {args.cmd}: {e}", file=sys.stderr)
        return 2
    return 0


def _hardware_command(args: argparse.Namespace) -> int:
    """``import-fastanddeep`` and ``calibrate`` (hardware hook)."""
    if args.cmd == "import-fastanddeep":
        from delgrad.fastanddeep import FastAndDeepError, import_experiment

        try:
            out = import_experiment(args.experiment_dir, args.out)
        except FastAndDeepError as e:
            print(f"delgrad import-fastanddeep: {e}", file=sys.stderr)
            return 2
        print(f"{args.experiment_dir} -> {out} (delgrad.Model.load({str(out)!r}))")
        return 0
    from dataclasses import replace

    from delgrad.calibrate import CalibrationConfig, calibrate_run

    try:
        res = calibrate_run(
            args.run_dir,
            args.inputs,
            args.recorded,
            args.out,
            base=args.base,
            config=replace(CalibrationConfig(), steps=args.steps),
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"delgrad calibrate: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: time offset {res.time_offset:+.4f}, output spike-time RMSE {res.rmse_before:.4f} -> "
        f"{res.rmse_after:.4f} over {res.pairs} spikes ({res.spike_mismatch} spike/silence mismatches)"
    )
    return 0


def _export_nir(run_dir: str, out: str) -> int:
    from pathlib import Path

    from delgrad.model import NETWORK_FILES
    from delgrad.multi import MultiNetwork
    from delgrad.network import Network
    from delgrad.nir import save_nir

    d = Path(run_dir) / "model"
    if (d / NETWORK_FILES["multi"]).exists():
        net: Network | MultiNetwork = MultiNetwork.load(d / NETWORK_FILES["multi"])
    elif (d / NETWORK_FILES["ttfs"]).exists():
        net = Network.load(d / NETWORK_FILES["ttfs"])
    else:
        raise FileNotFoundError(f"no saved network in {d} (expected {' or '.join(NETWORK_FILES.values())})")
    save_nir(net, out)
    print(f"{net!r} -> {out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from delgrad.inspection import inspect_run, parse_neurons
    from delgrad.rundir import RunDirError

    try:
        neurons = parse_neurons(args.neurons) if args.neurons is not None else None
        path = inspect_run(args.run_dir, args.sample, neurons, split=args.split, out=args.out)
    except (ValueError, IndexError, FileNotFoundError, FileExistsError, RunDirError) as e:
        print(f"delgrad inspect: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from delgrad.sweep import MissingRayError, RayConnectionError, SweepSpecError, run_sweep
    from delgrad.sweep_spec import load_spec

    try:
        if args.dry_run:
            spec = load_spec(args.spec)
            trials = spec.trials()
            for t in trials:
                print(t.name, " ".join(f"--set {o}" for o in t.overrides))
            print(f"{len(trials)} trials; base pipeline {spec.pipeline}; sweep directory {args.out or spec.out}")
            return 0
        res = run_sweep(
            args.spec,
            address=args.address,
            max_parallel=args.max_parallel,
            out=args.out,
            cpus_per_trial=args.cpus_per_trial,
            progress=not args.quiet,
        )
    except (MissingRayError, RayConnectionError, SweepSpecError) as e:
        print(f"delgrad sweep: {e}", file=sys.stderr)
        return 2
    t = res.table
    print(f"sweep directory: {res.sweep_dir}")
    print(
        f"{len(t)} trials: {int((t['status'] == 'ok').sum())} ok, {int((t['status'] == 'failed').sum())} failed; "
        f"ran {res.ran}, reused {res.reused}; {res.wall_s:.1f} s"
    )
    print(f"table: {res.sweep_dir / 'results.parquet'}  report: {res.sweep_dir / 'report.md'}")
    return 1 if (t["status"] == "failed").any() else 0


if __name__ == "__main__":
    sys.exit(main())
