"""Sweeps: spec parsing and errors, a tiny sweep on a local Ray (table, report, resume), failed
trials, and the message when Ray is missing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import delgrad
import numpy as np
import polars as pl
import pytest
from delgrad import cli
from delgrad.sweep_spec import SweepSpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent
SYN = ROOT / "pipelines" / "yinyang_synaptic.toml"
STUDY = ROOT / "pipelines" / "sweeps" / "yinyang_delays.toml"


def write_spec(path: Path, body: str, pipeline: Path = SYN) -> Path:
    path.write_text(f'pipeline = "{pipeline.as_posix()}"\n' + body)
    return path


TINY = """
name = "tiny"
[set]
"train.epochs" = 2
"train.checkpoint_every" = 1
[grid]
"network.hidden" = [[4], [6]]
"network.delay_kind" = ["none", "synaptic"]
"train.seed" = [0]
"""


def expected_params(hidden: int, kind: str) -> int:
    """Yin-Yang: 4 features + 1 bias input, 3 outputs; weights plus one kind of delays."""
    sizes = [(5, hidden), (hidden, 3)]
    weights = sum(i * o for i, o in sizes)
    delays = {
        "none": 0,
        "synaptic": weights,
        "axonal": sum(i for i, _ in sizes),
        "dendritic": sum(o for _, o in sizes),
    }[kind]
    return weights + delays


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for every test here (starting one takes seconds), shut down at the end."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(ray_local, tmp_path_factory):
    from delgrad.sweep import run_sweep

    d = tmp_path_factory.mktemp("sweep")
    spec = write_spec(d / "tiny.toml", TINY)
    res = run_sweep(spec, out=d / "out", progress=False, max_parallel=2)
    return spec, res


# --- the tiny sweep -------------------------------------------------------------------------


def test_tiny_sweep_table(tiny) -> None:
    _, res = tiny
    t = pl.read_parquet(res.sweep_dir / "results.parquet")
    assert t.equals(res.table)
    assert len(t) == 4 and res.ran == 4 and res.reused == 0
    for col in [
        "network.hidden",
        "network.delay_kind",
        "train.seed",
        "trial",
        "status",
        "n_params",
        "test_acc_best_val",
        "test_acc_final",
        "val_acc_best",
        "best_epoch",
        "epochs",
        "wall_s",
        "reused",
        "error",
    ]:
        assert col in t.columns, col
    assert t["status"].to_list() == ["ok"] * 4
    assert t["error"].null_count() == 4
    assert sorted((h[0], k) for h, k in zip(t["network.hidden"], t["network.delay_kind"])) == [
        (4, "none"),
        (4, "synaptic"),
        (6, "none"),
        (6, "synaptic"),
    ]
    for r in t.iter_rows(named=True):
        run_dir = res.sweep_dir / r["run_dir"]
        # An ordinary pipeline run directory.
        for f in ["config.toml", "metrics.parquet", "report.md", "model/network.npz"]:
            assert (run_dir / f).exists(), f
        assert r["n_params"] == expected_params(r["network.hidden"][0], r["network.delay_kind"])
        assert r["n_params"] == delgrad.Model.load(run_dir).network.n_parameters()
        m = pl.read_parquet(run_dir / "metrics.parquet")
        best = int(np.argmax(m["validation_acc"].to_numpy()))
        assert r["epochs"] == 2 and r["best_epoch"] == best + 1
        assert r["test_acc_best_val"] == m["test_acc"][best]
        assert r["val_acc_best"] == m["validation_acc"].max()
        assert r["test_acc_final"] == m["test_acc"][-1]
        for c in ["test_acc_best_val", "test_acc_final", "val_acc_best"]:
            assert 0.0 <= r[c] <= 1.0
        assert r["wall_s"] > 0 and r["reused"] is False
        trial = json.loads((run_dir.parent / "trial.json").read_text())
        assert trial["status"] == "ok"
        assert trial["rayon_threads"] == "1", "one CPU per trial -> one rayon thread"
        # Overrides reached the run: the resolved config says so.
        cfg = (run_dir / "config.toml").read_text()
        assert f'delay_kind = "{r["network.delay_kind"]}"' in cfg and "epochs = 2" in cfg


def test_tiny_sweep_report(tiny) -> None:
    _, res = tiny
    report = (res.sweep_dir / "report.md").read_text()
    assert "accuracy_vs_params.png" in report
    assert (res.sweep_dir / "accuracy_vs_params.png").stat().st_size > 10_000
    # One table row per (hidden, delay_kind) group, with its parameter count.
    for h, k in [(4, "none"), (4, "synaptic"), (6, "none"), (6, "synaptic")]:
        assert f"| {h} | {k} | {expected_params(h, k)} |" in report
    summary = json.loads((res.sweep_dir / "sweep.json").read_text())
    assert summary["trials"] == 4 and summary["ok"] == 4 and summary["ran"] == 4


def test_rerun_skips_finished_trials_and_resumes_an_unfinished_one(tiny) -> None:
    from delgrad.sweep import run_sweep

    spec, first = tiny
    trials = first.sweep_dir / "trials"
    stamps = {p: p.stat().st_mtime_ns for p in trials.glob("*/run/metrics.parquet")}
    assert len(stamps) == 4
    again = run_sweep(spec, out=first.sweep_dir, progress=False)
    assert again.ran == 0 and again.reused == 4
    assert again.table["reused"].to_list() == [True] * 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "no finished trial ran again"
    cols = ["trial", "n_params", "test_acc_best_val", "test_acc_final"]
    assert again.table.select(cols).equals(first.table.select(cols))

    # A trial interrupted after its last checkpoint but before it finished: it runs again, resumes
    # from the checkpoint, and ends with exactly the result it had.
    victim = first.table["trial"][1]
    (trials / victim / "trial.json").unlink()
    (trials / victim / "run" / "metrics.parquet").unlink()
    manifest_path = trials / victim / "run" / "run.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "status": "running"}))
    third = run_sweep(spec, out=first.sweep_dir, progress=False)
    assert third.ran == 1 and third.reused == 3
    row = third.table.filter(pl.col("trial") == victim)
    assert row["reused"].to_list() == [False]
    assert third.table.select(cols).equals(first.table.select(cols))


def test_failed_trial_is_recorded_and_the_sweep_goes_on(ray_local, tmp_path: Path, capsys) -> None:
    from delgrad.sweep import run_sweep

    spec = write_spec(
        tmp_path / "bad.toml",
        """
[set]
"train.epochs" = 1
[grid]
"network.hidden" = [[4]]
"network.delay_kind" = ["axonal", "synaptic"]
""",
    )
    # A failure only the run can find: the synaptic trial's directory holds someone else's file.
    victim = next(t for t in load_spec(spec).trials() if t.params["network.delay_kind"] == "synaptic")
    foreign = tmp_path / "out" / "trials" / victim.name / "run" / "notes.txt"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("mine")
    res = run_sweep(spec, out=tmp_path / "out", progress=False)
    t = res.table.sort("network.delay_kind")
    assert t["status"].to_list() == ["ok", "failed"]
    ok, bad = t.row(0, named=True), t.row(1, named=True)
    assert ok["n_params"] == expected_params(4, "axonal") and ok["error"] is None
    assert "RunDirError" in bad["error"] and "not a delgrad run" in bad["error"]
    assert foreign.read_text() == "mine" and sorted(foreign.parent.iterdir()) == [foreign], "nothing touched"
    assert bad["n_params"] is None and bad["test_acc_best_val"] is None
    assert "Traceback" in (res.sweep_dir / "trials" / bad["trial"] / "error.txt").read_text()
    assert "## Failed trials" in (res.sweep_dir / "report.md").read_text()
    # A failed trial is retried on the next run; the finished one is not.
    again = run_sweep(spec, out=tmp_path / "out", progress=False)
    assert again.ran == 1 and again.reused == 1
    # The CLI shows progress (one line per finished trial) and reports the failure in its exit status.
    capsys.readouterr()
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 trials already finished (resumed)" in out
    assert "failed hidden=4,delay_kind=synaptic" in out and "2 trials: 1 ok, 1 failed; ran 1, reused 1" in out


# --- without Ray, and bad specs (no Ray needed) ---------------------------------------------


def test_missing_ray_says_how_to_get_it(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    spec = write_spec(tmp_path / "s.toml", TINY)
    assert cli.main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "needs Ray" in err and "pip install 'delgrad[sweep]'" in err
    assert not (tmp_path / "sweeps").exists(), "nothing ran"


def test_unreachable_address_fails_fast(tmp_path: Path, capsys) -> None:
    pytest.importorskip("ray")
    spec = write_spec(tmp_path / "s.toml", TINY)
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    assert cli.main(["sweep", str(spec), "--address", "127.0.0.1:1", "--out", str(tmp_path / "o")]) == 2
    assert "cannot join the Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err
    assert cli.main(["sweep", str(spec), "--address", "nonsense", "--out", str(tmp_path / "o")]) == 2
    assert "expected 'auto'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "nothing ran"


@pytest.mark.parametrize(
    "body, message",
    [
        ('[grid]\n"train.epochz" = [1, 2]\n', "unknown pipeline key 'train.epochz'"),
        ('[grid]\n"netwrk.hidden" = [[4]]\n', "unknown pipeline key 'netwrk.hidden'"),
        ('[grid]\n"train.loss.deltaa" = [0.1]\n', "valid keys under [train.loss]"),
        ('[grid]\n"train.seed" = []\n', "'train.seed' needs a non-empty list"),
        ('[set]\n"train.epochs" = 2\n', "nothing to sweep"),
        ('[grid]\n"train.seed" = [0, 0]\n', "same configuration"),
        ('[random]\nn = 2\n[random.axes]\n"train.lr" = { gauss = [0, 1] }\n', "needs exactly one of uniform"),
        ('[random]\nn = 2\n[random.axes]\n"train.lr" = { loguniform = [0, 1] }\n', "loguniform needs low > 0"),
        ('[random]\nn = 0\n[random.axes]\n"train.lr" = { uniform = [0, 1] }\n', "n (number of draws)"),
        ('[grid]\n"train.seed" = [0]\n[report]\nover = "train.lr"\n', "not an axis of the sweep"),
        ('[grid]\n"train.seed" = [0]\n[[when]]\nmatch = {}\nset = { "train.seed" = 1 }\n', "may not override an axis"),
        ('bogus = 1\n[grid]\n"train.seed" = [0]\n', "unknown entries ['bogus']"),
        ("[grid\n", "not valid TOML"),
    ],
)
def test_bad_specs_name_what_is_wrong(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(SweepSpecError) as e:
        load_spec(write_spec(tmp_path / "s.toml", body))
    assert message in str(e.value)
    assert "s.toml" in str(e.value)


def test_missing_base_pipeline(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path / "s.toml", TINY, pipeline=tmp_path / "nope.toml")
    with pytest.raises(SweepSpecError, match="nope.toml does not exist"):
        load_spec(spec)
    assert cli.main(["sweep", str(spec), "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_random_search_is_seeded_and_in_range(tmp_path: Path) -> None:
    spec = load_spec(
        write_spec(
            tmp_path / "r.toml",
            """
[grid]
"network.delay_kind" = ["axonal", "synaptic"]
[random]
n = 5
seed = 3
[random.axes]
"train.lr" = { loguniform = [1e-3, 1e-2] }
"train.lr_gamma" = { uniform = [0.8, 0.99] }
"train.batch_size" = { choice = [50, 150] }
"train.lr_step" = { randint = [10, 30] }
""",
        )
    )
    trials = spec.trials()
    assert len(trials) == 10
    assert [t.name for t in trials] == [t.name for t in load_spec(spec.path).trials()], "stable names"
    assert len({t.name for t in trials}) == 10
    for t in trials:
        p = t.params
        assert 1e-3 <= p["train.lr"] <= 1e-2 and 0.8 <= p["train.lr_gamma"] <= 0.99
        assert p["train.batch_size"] in (50, 150) and 10 <= p["train.lr_step"] <= 30
        # The override text parses back to the exact drawn value.
        from delgrad import pipeline

        cfg = pipeline.load_config(SYN, list(t.overrides))
        assert cfg.train.lr == p["train.lr"] and cfg.train.lr_step == p["train.lr_step"]
    # Each draw is crossed with the whole grid: both delay kinds see the same draws.
    draws = [tuple(v for k, v in t.params.items() if k != "network.delay_kind") for t in trials]
    assert draws[0::2] == draws[1::2]
    lrs = np.log10([p[0] for p in draws[0::2]])
    assert len(set(lrs)) == 5 and not math.isclose(lrs.min(), lrs.max())


def test_shipped_study_matches_the_shipped_pipelines(tmp_path: Path, capsys) -> None:
    from delgrad import pipeline

    spec = load_spec(STUDY)
    trials = spec.trials()
    assert len(trials) == 6 * 4 * 5 and len({t.name for t in trials}) == 120
    assert spec.report["curve"] == "network.delay_kind" and spec.report["over"] == "train.seed"
    shipped = {"none": "yinyang_nodelay", "axonal": "yinyang_axonal", "synaptic": "yinyang_synaptic"}
    for t in trials:
        cfg = pipeline.load_config(spec.pipeline, list(t.overrides))
        kind = t.params["network.delay_kind"]
        assert cfg.network.hidden == t.params["network.hidden"]
        assert cfg.train.seed == t.params["train.seed"]
        if kind in shipped:
            # Same settings as the shipped pipeline of that delay type, apart from its name.
            ref = pipeline.load_config(
                ROOT / "pipelines" / f"{shipped[kind]}.toml",
                [f"network.hidden={t.params['network.hidden']}", f"train.seed={t.params['train.seed']}"],
            )
            assert cfg.replace(name="") == ref.replace(name=""), t.name
        else:
            assert cfg.train.lr_gamma == 0.95
    assert cli.main(["sweep", str(STUDY), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "120 trials" in out and "hidden=5,delay_kind=none,seed=0__" in out


def test_axis_of_mixed_types_is_stored_as_text(tmp_path: Path) -> None:
    from delgrad.sweep import results_table

    spec = load_spec(
        write_spec(tmp_path / "m.toml", '[grid]\n"train.lr" = [0.005, [0.005, 0.001]]\n"train.seed" = [0, 1]\n')
    )
    trials = spec.trials()
    rows = {t.name: {"status": "ok", "n_params": 1, "test_acc_best_val": 0.5, "wall_s": 1.0} for t in trials}
    t = results_table(spec, trials, rows, tmp_path)
    assert t["train.lr"].to_list() == ["0.005", "0.005", "[0.005, 0.001]", "[0.005, 0.001]"]
    assert t["train.seed"].dtype == pl.Int64 and t["train.seed"].to_list() == [0, 1, 0, 1]
    assert t["n_params"].to_list() == [1] * 4 and t["error"].null_count() == 4
