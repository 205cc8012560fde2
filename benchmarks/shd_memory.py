"""Peak memory of an SHD-sized run's parts, for one or more builds side by side.

    python benchmarks/shd_memory.py [--build DIR ...] [--what split step gather] [--samples 8156]
                                    [--spikes 8000] [--hidden 512] [--batch 256] [--dataset shd]

Each measurement runs in a fresh process of each build (``DIR/.venv/bin/python``; default: this
checkout), on one encoded data set of the synthetic stand-in of ``pipelines/shd.toml`` at SHD's
shape (``--samples`` training samples, 700 channels, 20 classes, ``--spikes`` input spikes per
sample), and prints wall time and the process's peak resident set (VmHWM):

* ``split``: the training split as a run builds it (``pipeline.training_split``) with the
  recipe's ``[augment]`` (channel shift 40, blend): reading the Parquet data set plus whatever
  the augmentation holds.
* ``step``: one training step of ``pipelines/shd.toml`` (recurrent ``--hidden``, batch
  ``--batch``, 8 shards, augmentation off) on the split: forward, loss, backward, update.
* ``gather``: the training split held two ways, each in its own fresh process of this checkout:
  *resident* (read from Parquet into arrays, as ``load_split`` did before the split was
  mapped: ``SpikeDataset.all()`` into a ``SpikeSet``) and *mapped* (``pipeline.load_split``:
  ``data/train.arrow`` memory-mapped; the first mapped process writes the file, a second one
  reuses it, a third one after evicting the file from the page cache with
  ``posix_fadvise(DONTNEED)``, a fourth one evicts the mapped pages after loading, with
  ``madvise(MADV_PAGEOUT)``, so that its epoch reads the split from the disk, as under memory
  pressure). Each reports the load time, then one epoch of batch gathers
  (``SpikeSet.select`` of ``--batch`` samples of a uniform permutation, the rows a training
  step reads), and ``RssAnon`` / ``RssFile`` (``/proc/self/status``) after the load and after
  the epoch. ``--dataset ssc`` takes SSC's class count (35); ``--samples 75000`` is SSC's
  training split.

Builds alternate per measurement so that both see the same machine. The rayon thread count is
the environment's (``RAYON_NUM_THREADS``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The gather measurements, in the order they run: the first mapped process writes train.arrow.
GATHERS = ("gather-mapped", "gather-reused", "gather-cold", "gather-evicted", "gather-resident")


def overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"data.dataset={args.dataset}",
        "data.synthetic=true",
        f"data.n_train={args.samples}",
        "data.n_validation=16",
        "data.n_test=16",
        f"data.spikes_per_sample={args.spikes}",
        f"network.hidden=[{args.hidden}]",
        f"train.batch_size={args.batch}",
    ]


def status_mb(key: str = "VmHWM") -> float:
    """A line of ``/proc/self/status`` in MB (``VmHWM``: peak resident set)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return status_mb("VmHWM")


def memory() -> dict[str, float]:
    return {key: status_mb(key) for key in ("RssAnon", "RssFile", "VmHWM")}


def evict(path: Path) -> None:
    """Drops this process's mapped pages of ``path`` and the file from the page cache
    (``madvise(MADV_PAGEOUT)``, then ``posix_fadvise(DONTNEED)``): what the kernel does to a
    mapped split under memory pressure, so the next reads come from the disk."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madv_pageout = 21  # linux/mman.h, Linux >= 5.4
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if libc.madvise(start, end - start, madv_pageout) != 0:
                raise OSError(ctypes.get_errno(), f"madvise(MADV_PAGEOUT) on {path}")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def gather(args: argparse.Namespace, data_dir: Path) -> dict:
    """One of the ``gather`` measurements (``args.child``): load the split, one epoch of gathers."""
    import numpy as np
    from delgrad import pipeline
    from delgrad._core import SpikeSet
    from delgrad.data.parquet import SpikeDataset

    arrow = data_dir / "train.arrow"
    if args.child == "gather-cold":
        fd = os.open(arrow, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    t0 = time.perf_counter()
    if args.child == "gather-resident":
        ds = SpikeDataset(data_dir, "train")
        spikes = SpikeSet(ds.all().spikes, len(ds))
    else:
        spikes = pipeline.load_split(data_dir, "train")[0].spikes
    load = time.perf_counter() - t0
    loaded = memory()
    if args.child == "gather-evicted":
        evict(arrow)
        loaded = memory()
    order = np.random.default_rng(0).permutation(spikes.n_samples).astype(np.uint32)
    rows = 0
    t0 = time.perf_counter()
    for k in range(0, order.size, args.batch):
        rows += spikes.select(order[k : k + args.batch]).num_rows
    epoch = time.perf_counter() - t0
    if rows != spikes.n_spikes:
        raise RuntimeError(f"an epoch gathered {rows} rows of {spikes.n_spikes}")
    stat = arrow.stat() if arrow.exists() else None
    return {
        "load_s": load,
        "epoch_s": epoch,
        "rows": rows,
        "loaded": loaded,
        "after": memory(),
        "file": None if stat is None else [stat.st_ino, stat.st_mtime_ns, stat.st_size],
    }


def child(args: argparse.Namespace) -> None:
    """One measurement in this process (of the build whose python runs it); one JSON line."""
    import numpy as np
    from delgrad import pipeline
    from delgrad.config import load_config

    data_dir = Path(args.data) / "data"
    if args.child.startswith("gather"):
        print(json.dumps(gather(args, data_dir)))
        return
    t0 = time.perf_counter()
    if args.what == "split":
        cfg = load_config(ROOT / "pipelines" / "shd.toml", [*overrides(args), "augment.enabled=true"])
        train = pipeline.training_split(data_dir, cfg)
        size = getattr(train, "epoch_size", len(train))
    else:
        from delgrad.train import Trainer

        cfg = load_config(ROOT / "pipelines" / "shd.toml", [*overrides(args), "augment.enabled=false"])
        train, _, n_in = pipeline.load_split(data_dir, "train")
        loaded = peak_mb()
        net = pipeline.build_network(cfg, n_in, pipeline.n_classes(cfg))
        t0 = time.perf_counter()
        Trainer(net, cfg.train, shards=8).step(train, np.arange(args.batch, dtype=np.uint32), 1.0)
        size = args.batch
    out = {"seconds": time.perf_counter() - t0, "peak_mb": peak_mb(), "samples": size}
    if args.what == "step":
        out["split_loaded_mb"] = loaded
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", action="append", help="a checkout with its .venv (repeatable; default: this one)")
    p.add_argument("--what", nargs="+", choices=["split", "step", "gather"], default=["split", "step"])
    p.add_argument("--dataset", choices=["shd", "ssc"], default="shd")
    p.add_argument("--samples", type=int, default=8156)
    p.add_argument("--spikes", type=int, default=8000)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--child", choices=["split", "step", *GATHERS], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help="where the data set is written (default: the system's temporary folder)")
    args = p.parse_args()
    if args.child:
        args.what = args.child
        child(args)
        return

    from delgrad import pipeline
    from delgrad.config import load_config

    builds = [Path(b).resolve() for b in (args.build or [ROOT])]
    commits = {
        b: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=b, capture_output=True, text=True).stdout.strip()
        for b in builds
    }
    print(
        f"shd_memory: {args.dataset} stand-in, {args.samples} samples x ~{args.spikes} input spikes, "
        f"700-{args.hidden}(rec)-{35 if args.dataset == 'ssc' else 20}, batch "
        f"{args.batch}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, RAYON_NUM_THREADS="
        f"{os.environ.get('RAYON_NUM_THREADS', 'all')}, load average {os.getloadavg()[0]:.1f}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        pipeline.encode(load_config(ROOT / "pipelines" / "shd.toml", overrides(args)), Path(tmp))
        print(f"  encoded the synthetic data set in {time.perf_counter() - t0:.1f} s", flush=True)
        if "gather" in args.what:
            run_gathers(args, Path(tmp))
        for what in args.what:
            if what == "gather":
                continue
            for build in builds:
                command = [str(build / ".venv" / "bin" / "python"), __file__, "--child", what, "--data", tmp]
                command += ["--samples", str(args.samples), "--spikes", str(args.spikes)]
                command += ["--hidden", str(args.hidden), "--batch", str(args.batch)]
                # The child imports delgrad from the build's own checkout.
                env = {**os.environ, "PYTHONPATH": ""}
                out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True, cwd=build)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                extra = f", split loaded {r['split_loaded_mb']:.0f} MB" if "split_loaded_mb" in r else ""
                print(
                    f"  {what:5s} {build.name} ({commits[build]}): {r['seconds']:.1f} s, peak RSS "
                    f"{r['peak_mb']:.0f} MB{extra} ({r['samples']} samples)",
                    flush=True,
                )


def run_gathers(args: argparse.Namespace, tmp: Path) -> None:
    """The ``gather`` measurements of this checkout, each in a fresh process (see the module doc)."""
    for what in GATHERS:
        command = [sys.executable, __file__, "--child", what, "--data", str(tmp), "--batch", str(args.batch)]
        out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        loaded, after = r["loaded"], r["after"]
        file = "" if r["file"] is None else f", train.arrow inode {r['file'][0]} mtime_ns {r['file'][1]}"
        print(
            f"  {what:15s} load {r['load_s']:.1f} s (RssAnon {loaded['RssAnon']:,.0f} MB, RssFile "
            f"{loaded['RssFile']:,.0f} MB); epoch of gathers ({r['rows']:,} rows, batch {args.batch}) "
            f"{r['epoch_s']:.1f} s (RssAnon {after['RssAnon']:,.0f} MB, RssFile {after['RssFile']:,.0f} MB); "
            f"peak RSS {after['VmHWM']:,.0f} MB{file}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
