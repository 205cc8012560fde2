"""Side-by-side speed of two builds of delgrad, runs alternated so that both see the same machine.

Each build is a checkout with its own ``.venv`` (``pip install -e .``, release) and, for
``core``, its release examples (``cargo build --release --examples -p delgrad-core``).

Usage: python benchmarks/compare_builds.py BASE_DIR NEW_DIR {ttfs,shd,core} [--rounds N]

``ttfs``  ``benchmarks/ttfs_throughput.py`` configurations (median samples/s of 7 epochs each);
``shd``   ``benchmarks/shd_throughput.py`` (median M synaptic events/s of 3 steps);
``core``  the core-only examples ``ttfs_throughput 5000 20`` and ``shd_throughput 64 5000 3``.
Prints per round the load average, then per measurement the median over rounds of each build,
their ratio (new / base) and every round's value.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess


def run(cmd: list[str], cwd: str | None = None) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=cwd).stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("what", choices=["ttfs", "shd", "core"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    trees = {"base": os.path.abspath(args.base), "new": os.path.abspath(args.new)}
    py = {t: f"{d}/.venv/bin/python" for t, d in trees.items()}
    results: dict[str, dict[str, list[float]]] = {}

    def record(key: str, tag: str, value: float) -> None:
        results.setdefault(key, {}).setdefault(tag, []).append(value)

    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus; base {trees['base']}, new {trees['new']}")
    for rnd in range(args.rounds):
        order = ["base", "new"] if rnd % 2 == 0 else ["new", "base"]
        if args.what == "ttfs":
            for hidden, batch in [(30, 150), (30, 5000), (120, 150), (120, 5000)]:
                for path in ("set", "table"):
                    for t in order:
                        script = f"{trees[t]}/benchmarks/ttfs_throughput.py"
                        out = run([py[t], script, "--repeat", "7", "--child", str(hidden), str(batch), path], trees[t])
                        key = f"ttfs 4-{hidden}-3, batch {batch}, {path}: samples/s"
                        record(key, t, json.loads(out)["samples_per_s_median"])
        elif args.what == "shd":
            for t in order:
                out = run([py[t], f"{trees[t]}/benchmarks/shd_throughput.py", "--repeat", "3"], trees[t])
                record("SHD step (Python API): M events/s", t, float(re.search(r"median ([\d.]+) M", out).group(1)))
        else:
            for t in order:
                examples = f"{trees[t]}/target/release/examples"
                out = run([f"{examples}/ttfs_throughput", "5000", "20"])
                rate = float(re.search(r"median ([\d.]+) samples/s", out).group(1))
                record("core ttfs_throughput 5000 20: samples/s", t, rate)
                out = run([f"{examples}/shd_throughput", "64", "5000", "3"])
                rate = float(re.search(r"best: ([\d.]+) M", out).group(1))
                record("core shd_throughput 64 5000 3: best M events/s", t, rate)
        print(f"round {rnd}: load average {os.getloadavg()}", flush=True)
    print(f"{'measurement':<48}{'base':>12}{'new':>12}{'new/base':>10}")
    for key, v in results.items():
        b, n = statistics.median(v["base"]), statistics.median(v["new"])
        print(f"{key:<48}{b:>12,.1f}{n:>12,.1f}{n / b:>10.3f}")
        print(f"{'':<8}base {[round(x, 1) for x in v['base']]}\n{'':<8}new  {[round(x, 1) for x in v['new']]}")


if __name__ == "__main__":
    main()
