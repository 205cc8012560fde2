"""The ``delgrad`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="delgrad", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a pipeline: encode -> train -> evaluate -> report")
    r.add_argument("pipeline", help="pipeline TOML, e.g. pipelines/yinyang_synaptic.toml")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline key, e.g. --set train.epochs=10 (repeatable)")
    r.add_argument("--out", help="run directory (default runs/<name>-seed<seed>); an interrupted run there resumes")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser("evaluate", help="re-evaluate a finished run directory and rewrite its report")
    e.add_argument("run_dir")
    args = p.parse_args(argv)

    from delgrad import pipeline

    if args.cmd == "run":
        run_dir = pipeline.run(args.pipeline, args.overrides, args.out, progress=not args.quiet)
        print(f"run directory: {run_dir}")
        print((run_dir / "report.md").read_text().split("\n## ")[0])
    elif args.cmd == "evaluate":
        res = pipeline.evaluate_run(args.run_dir)
        for k, v in res.items():
            print(f"{k:>16}: {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
