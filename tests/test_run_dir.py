"""One stack: typed pipeline files, the one trainer for every network kind (schedules,
clipping, delay parametrisations, checkpoints within and between epochs, exact resume) and run
directories that never lose or mix results. Through the CLI and the public API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from delgrad import cli, pipeline
from delgrad.config import ConfigError, TrainConfig, load_config, parse_config
from delgrad.rundir import RunDir, RunDirError
from delgrad.sweep_spec import SweepSpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent
SYN = ROOT / "pipelines" / "yinyang_synaptic.toml"
TEMPORAL = ROOT / "pipelines" / "temporal.toml"
FAST = ["train.epochs=2"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "delgrad.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``path`` with its size and modification time."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


# --- pipeline files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("network.hiden=[5]", "--set network.hiden: unknown key (valid keys under [network]: delay_kind,"),
        ("network.delay_knd=none", "--set network.delay_knd: unknown key"),
        ("data.datset=yinyang", "--set data.datset: unknown key (valid keys under [data]: "),
        ("tain.epochs=3", "--set tain: unknown key (valid keys at the top level: augment, data,"),
        ("train.lr=fast", "--set train.lr: expected a number or a list of numbers, got 'fast'"),
        ("train.epochs=three", "--set train.epochs: expected an integer, got 'three'"),
        ("train.epochs=2.5", "--set train.epochs: expected an integer, got 2.5"),
        ("train.batch_size=-5", "--set train.batch_size: must be >= 1, got -5"),
        (
            "network.delay_kind=bogus",
            "--set network.delay_kind: expected one of 'none', 'synaptic', 'axonal', 'dendritic', got 'bogus'",
        ),
        ("network.delay_range=[0.2]", "--set network.delay_range: expected 2 values, got 1"),
        ("train.loss.kind=hinge", "--set train.loss.kind: expected one of 'mse', 'ce', got 'hinge'"),
        ("train.lr.fast=1", "train.lr is a value, not a table"),
        ("network.t_end=10", "--set network.t_end: applies to multi-spike networks only"),
        ("data.synthetic=true", "--set data.synthetic: applies to data set shd / ssc only"),
        ("train.delay.high=-1", "--set train.delay.high: must be >= 0.0, got -1.0"),
    ],
)
def test_bad_overrides_are_one_line_before_any_work(tmp_path: Path, override: str, message: str) -> None:
    out = tmp_path / "out"
    r = run_cli("run", str(SYN), "--set", override, "--out", str(out))
    assert r.returncode == 2
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists(), "nothing was started"


def test_a_typo_inside_a_pipeline_file_names_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SYN.read_text().replace("epochs = 300", "epocs = 300"))
    with pytest.raises(ConfigError, match=r"bad.toml: train.epocs: unknown key \(valid keys under \[train\]: "):
        load_config(bad)
    valid = str(pytest.raises(ConfigError, load_config, bad).value)
    for key in ("batch_size", "checkpoint_every", "epochs", "lr_schedule", "max_grad_norm", "select_on"):
        assert key in valid


def test_every_shipped_pipeline_round_trips_through_its_resolved_toml() -> None:
    import tomllib

    for toml in sorted((ROOT / "pipelines").glob("*.toml")):
        cfg = load_config(toml)
        again = parse_config(tomllib.loads(cfg.to_toml()))
        assert again == cfg and again.digest() == cfg.digest(), toml.name
    assert load_config(SYN, ["train.epochs=5"]).digest() != load_config(SYN).digest()


def test_multi_spike_only_and_ttfs_only_keys_are_checked_by_kind() -> None:
    with pytest.raises(ConfigError, match="train.max_silent: applies to TTFS networks only"):
        load_config(TEMPORAL, ["train.max_silent=0.5"])
    with pytest.raises(ConfigError, match="hardware: training in the loop applies to TTFS networks only"):
        load_config(TEMPORAL, ["hardware.enabled=true"])
    cfg = load_config(TEMPORAL, ["network.recurrent=true", "train.max_grad_norm=1.0"])
    assert cfg.multi and cfg.network.recurrent and cfg.train.max_grad_norm == 1.0


def test_sweep_files_validate_through_the_pipeline_schema(tmp_path: Path) -> None:
    def spec(body: str) -> Path:
        path = tmp_path / "s.toml"
        path.write_text(f'pipeline = "{TEMPORAL.as_posix()}"\n' + body)
        return path

    # Multi-spike keys are pipeline keys like any other.
    trials = load_spec(spec('[grid]\n"network.recurrent" = [false, true]\n"train.lr_schedule" = ["cosine"]\n')).trials()
    assert len(trials) == 2
    with pytest.raises(SweepSpecError, match=r"network.readout: expected one of 'max', 'exp_mean', got 'mean'"):
        load_spec(spec('[grid]\n"network.readout" = ["mean"]\n'))
    with pytest.raises(SweepSpecError, match="train.bump: applies to TTFS networks only"):
        load_spec(spec('[grid]\n"train.bump" = [0.1]\n'))


# --- run directories ---------------------------------------------------------------------------


def test_finished_run_is_left_alone_and_other_configs_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = run_cli("run", str(SYN), "--set", "train.epochs=2", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["config_hash"] == load_config(SYN, FAST).digest()
    assert manifest["delgrad_version"] and manifest["train_seconds"] > 0
    before = tree(out)

    r = run_cli("run", str(SYN), "--set", "train.epochs=2", "--out", str(out), "--quiet")
    assert r.returncode == 0 and "already finished" in r.stderr
    assert tree(out) == before, "the same command on a finished run changes no file"

    r = run_cli("run", str(SYN), "--set", "train.epochs=3", "--set", "network.hidden=[10]", "--out", str(out))
    assert r.returncode == 2 and "different configuration" in r.stderr
    assert "network.hidden: [30] -> [10]" in r.stderr and "train.epochs: 2 -> 3" in r.stderr
    assert tree(out) == before

    # `delgrad evaluate` rewrites the report but keeps the training wall time.
    r = run_cli("evaluate", str(out))
    assert r.returncode == 0, r.stderr
    assert f"Training wall time: {manifest['train_seconds']:.1f} s." in (out / "report.md").read_text()

    r = run_cli("run", str(SYN), "--set", "train.epochs=3", "--out", str(out), "--quiet", "--restart")
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(out / "metrics.parquet")["epoch"].to_list() == [1, 2, 3]
    assert json.loads((out / "run.json").read_text())["config_hash"] == load_config(SYN, ["train.epochs=3"]).digest()


def test_a_directory_that_is_not_a_run_is_never_touched(tmp_path: Path) -> None:
    user = tmp_path / "thesis"
    (user / "plots").mkdir(parents=True)
    for name in ("config.toml", "report.md", "plots/curves.png", "metrics.parquet"):
        (user / name).write_text(f"my {name}")
    before = tree(user)
    r = run_cli("run", str(SYN), "--set", "train.epochs=1", "--out", str(user))
    assert r.returncode == 2 and "is not a delgrad run" in r.stderr
    r = run_cli("run", str(SYN), "--set", "train.epochs=1", "--out", str(user), "--restart")
    assert r.returncode == 2 and "is not a delgrad run" in r.stderr, "--restart discards runs only"
    r = run_cli("evaluate", str(user))
    assert r.returncode == 2 and "not a delgrad run directory" in r.stderr
    assert tree(user) == before


def test_a_run_in_use_by_another_process_is_refused(tmp_path: Path) -> None:
    cfg = load_config(SYN, FAST)
    with RunDir.open(tmp_path / "run", cfg):
        with pytest.raises(RunDirError, match="in use by another delgrad process"):
            pipeline.run(SYN, FAST, tmp_path / "run", progress=False)


@pytest.mark.parametrize(("pipeline_file", "sets"), [(SYN, ["train.epochs=6"]), (TEMPORAL, ["train.epochs=6"])])
def test_interrupted_runs_resume_exactly_and_say_so(tmp_path: Path, pipeline_file: Path, sets: list[str]) -> None:
    """Ctrl-C at a random point of a real CLI run, then the same command: the metrics equal an
    uninterrupted run's, for both network kinds, with checkpoints within epochs too."""
    sets = [*sets, "train.checkpoint_every_batches=3"]
    ref = pipeline.run(pipeline_file, sets, tmp_path / "ref", progress=False)
    out = tmp_path / "interrupted"
    args = [sys.executable, "-m", "delgrad.cli", "run", str(pipeline_file), "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Interrupt once the first checkpoint exists (the run is then well into training).
    deadline = time.monotonic() + 120
    while not (out / "checkpoint" / "state.npz").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    manifest = json.loads((out / "run.json").read_text())
    if manifest["status"] != "finished":  # the run may have ended before the signal reached it
        assert manifest["status"] == "failed" and "KeyboardInterrupt" in manifest["error"]
        r = run_cli("run", str(pipeline_file), "--out", str(out), *[a for s in sets for a in ("--set", s)])
        assert r.returncode == 0, r.stderr
        assert "resuming after epoch" in r.stderr
    got = pl.read_parquet(out / "metrics.parquet").drop("seconds")
    assert got.equals(pl.read_parquet(ref / "metrics.parquet").drop("seconds"))


def test_checkpoints_within_an_epoch_resume_exactly(tmp_path: Path) -> None:
    """Stopped after every possible batch: each resumed run equals the uninterrupted one."""
    sets = ["train.epochs=2", "train.checkpoint_every_batches=1", "train.batch_size=1000"]
    cfg = load_config(TEMPORAL, sets)  # 3000 training samples: 3 batches per epoch
    ref = pipeline.run_config(cfg, tmp_path / "ref", progress=False)
    reference = pl.read_parquet(ref / "metrics.parquet").drop("seconds")
    data_dir = ref / "data"
    from delgrad.train import Trainer

    class Stop(Exception):
        pass

    for stop_after in range(1, 6):
        out = tmp_path / f"stop{stop_after}"
        with RunDir.open(out, cfg):
            train, _, n_in = pipeline.load_split(data_dir, "train")
            evals = {name: pipeline.load_split(data_dir, name)[0] for name in ("validation", "test")}
            net = pipeline.build_network(cfg, n_in, pipeline.n_classes(cfg))
            trainer = Trainer(net, cfg.train)
            calls = []

            def on_batch(done: int, total: int, loss: float, calls=calls, stop_after=stop_after) -> None:
                calls.append(done)
                if len(calls) == stop_after:
                    raise Stop

            with pytest.raises(Stop):
                trainer.fit(train, evals, out, on_batch=on_batch)
        resumed = pipeline.run_config(cfg, out, progress=False, say=lambda text: None)
        got = pl.read_parquet(resumed / "metrics.parquet").drop("seconds")
        assert got.equals(reference), stop_after


def test_a_checkpoint_is_one_atomic_file(tmp_path: Path) -> None:
    """Killing the writer at any moment leaves either the old or the new checkpoint: the state
    is a single file renamed into place, never two files that can disagree."""
    run = pipeline.run(TEMPORAL, FAST, tmp_path / "r", progress=False)
    files = sorted(p.name for p in (run / "checkpoint").iterdir())
    assert files == ["state.npz"]


def test_what_a_killed_writer_left_goes_at_the_next_write_and_nothing_else(tmp_path: Path) -> None:
    """A SIGKILL skips ``atomic_path``'s clean-up; the next write of the same file removes the
    temporaries of writers that are gone, and leaves a live writer's and every other name."""
    from delgrad.rundir import atomic_write

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".state.npz.tmp{gone.pid}"
        kept = [
            tmp_path / f".state.npz.tmp{live.pid}",  # a writer still at work
            tmp_path / ".state.npz.tmp",  # no pid: not a temporary of atomic_path
            tmp_path / f".state.npz.tmp{gone.pid}x",
            tmp_path / f".other.npz.tmp{gone.pid}",  # another file's
            tmp_path / f"state.npz.tmp{gone.pid}",
        ]
        for p in [stale, *kept]:
            p.write_text("left")
        atomic_write(tmp_path / "state.npz", "new")
        assert (tmp_path / "state.npz").read_text() == "new"
        assert not stale.exists()
        assert all(p.read_text() == "left" for p in kept)
    finally:
        live.kill()
        live.wait(timeout=30)


# --- the one trainer ---------------------------------------------------------------------------


def _temporal_trainer(tmp_path: Path, **train: object):
    from delgrad.train import Trainer

    cfg = load_config(TEMPORAL, FAST)
    run = pipeline.run_config(cfg, tmp_path / "data_run", progress=False)
    split, _, n_in = pipeline.load_split(run / "data", "train")
    net = pipeline.build_network(cfg, n_in, pipeline.n_classes(cfg))
    return Trainer(net, TrainConfig(**{**cfg.train.__dict__, **train})), split


def test_multi_spike_trainer_clips_gradients_and_uses_per_layer_rates(tmp_path: Path) -> None:
    trainer, split = _temporal_trainer(tmp_path, lr=[0.01, 0.0], lr_delay=0.0, max_grad_norm=1e-3)
    readout_before = trainer.net.readout.layer.weights.copy()
    hidden_before = trainer.net.layers[0].weights.copy()
    batch = np.arange(64, dtype=np.uint32)
    _, _, grads = trainer.task.step(split, batch)
    assert np.sqrt(sum(float(np.sum(g * g)) for g in grads)) > 1e-3, "the clip below is active"
    seen = []
    step = trainer.adam.step
    trainer.adam.step = lambda params, grads, scale: (
        seen.append([g.copy() for g in grads]),
        step(params, grads, scale),
    )
    trainer.step(split, batch, 1.0)
    assert np.sqrt(sum(float(np.sum(g * g)) for g in seen[0])) == pytest.approx(1e-3)
    np.testing.assert_array_equal(trainer.net.readout.layer.weights, readout_before)  # its rate is 0
    assert not np.array_equal(trainer.net.layers[0].weights, hidden_before)


def test_multi_spike_trainer_sigmoid_delays_stay_in_range(tmp_path: Path) -> None:
    from delgrad.optim import DelayParam

    trainer, split = _temporal_trainer(tmp_path, delay=DelayParam("sigmoid", 0.0, 25.0), lr_delay=5.0)
    for start in range(0, 640, 64):
        trainer.step(split, np.arange(start, start + 64, dtype=np.uint32), 1.0)
    delays = trainer.net.layers[0].delays
    assert delays.min() >= 0.0 and delays.max() <= 25.0 and delays.std() > 0


def test_cosine_schedule_ends_at_its_floor() -> None:
    from delgrad._core import Neuron
    from delgrad.network import Network
    from delgrad.train import Trainer

    net = Network.random([3, 4, 2], Neuron(), seed=0)
    trainer = Trainer(net, TrainConfig(epochs=11, lr_schedule="cosine", lr_min=0.1))
    assert trainer.lr_scale(0) == 1.0 and trainer.lr_scale(10) == pytest.approx(0.1)
    assert trainer.lr_scale(5) == pytest.approx(0.55)


def test_per_layer_values_need_one_per_layer() -> None:
    from delgrad._core import Neuron
    from delgrad.network import Network
    from delgrad.train import Trainer

    net = Network.random([3, 4, 4, 2], Neuron(), seed=0)
    with pytest.raises(ValueError, match=r"train.lr: 4 values for 3 layers"):
        Trainer(net, TrainConfig(lr=[0.1, 0.1, 0.1, 0.1]))
    trainer = Trainer(net, TrainConfig(lr=[0.1, 0.2]))  # (hidden layers, last layer)
    assert trainer.adam.lrs[::2] == [0.1, 0.1, 0.2]


def test_cli_output_to_a_file_has_one_line_per_epoch(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "delgrad.cli",
                "run",
                str(TEMPORAL),
                "--set",
                "train.epochs=3",
                "--out",
                str(tmp_path / "r"),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    assert r.returncode == 0
    lines = [line for line in log.read_text().splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "\x1b[" not in log.read_text(), "no terminal control codes in a file"


def test_the_sweep_cli_refuses_bad_values_before_running(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f'pipeline = "{SYN.as_posix()}"\n[grid]\n"train.epochs" = [1, "two"]\n')
    assert cli.main(["sweep", str(path), "--dry-run"]) == 2
    assert "train.epochs: expected an integer, got 'two'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "sweeps")
