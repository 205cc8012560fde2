"""Progress of a running sweep: a rich bar (done / total, running, failed, elapsed, remaining)
and one line per finished trial, which is also what a log file shows when not on a terminal."""

from __future__ import annotations

from typing import Any

from delgrad.sweep_spec import Trial


class SweepProgress:
    """Context manager; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, reused: int) -> None:
        self.enabled, self.total, self.reused = enabled, total, reused
        self.running = self.failed = 0
        self.done = reused

    def __enter__(self) -> SweepProgress:
        if not self.enabled:
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("trials"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("sweep", total=self.total, completed=self.done, info=self._info())
        if self.reused:
            self.bar.console.print(f"{self.reused} of {self.total} trials already finished (resumed)")
        return self

    def _info(self) -> str:
        return f"running {self.running}  failed {self.failed}"

    def started(self, trial: Trial) -> None:
        self.running += 1
        if self.enabled:
            self.bar.update(self.task, info=self._info())

    def finished(self, trial: Trial, row: dict[str, Any]) -> None:
        self.running -= 1
        self.done += 1
        ok = row.get("status") == "ok"
        self.failed += not ok
        if not self.enabled:
            return
        if ok:
            msg = (
                f"[green]ok[/]     {trial.name}  test {row['test_acc_best_val']:.4f}  "
                f"params {row['n_params']}  {row['wall_s']:.1f} s"
            )
        else:
            from rich.markup import escape

            msg = f"[red]failed[/] {trial.name}  {escape(str(row.get('error')))}"
        self.bar.console.print(msg, highlight=False, soft_wrap=True)  # whole lines in log files
        self.bar.update(self.task, completed=self.done, info=self._info())

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
