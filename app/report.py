"""What the job shows its user: step lines, progress while the explainers run, a closing table.

Text from the data, the model or the user (column names, paths, messages) is printed literally,
never as rich markup: a "[x]" in a column name must show as itself.

The only module of the job that imports rich. On a terminal progress is a live bar; in a log
(a Ray job's output streamed to the laptop) it is a plain line at every quarter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text


class Advance(Protocol):
    def __call__(self, name: str, amount: int) -> None: ...


class Reporter:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)

    def info(self, text: str) -> None:
        self.console.print(Text(text, style="dim"), soft_wrap=True)

    def notice(self, text: str) -> None:
        self.console.print(Text.assemble(("Notice: ", "yellow"), text), soft_wrap=True)

    def warn(self, text: str) -> None:
        self.console.print(Text.assemble(("Warning: ", "yellow"), text), soft_wrap=True)

    def step(self, name: str, detail: str, seconds: float) -> None:
        line = Text.assemble(("✓ ", "green"), (name, "bold"), f" {detail} ", (f"({seconds:.2f} s)", "dim"))
        self.console.print(line, soft_wrap=True)

    def candidates(self, rows: Sequence[tuple[int, float, float]], best: int) -> None:
        table = Table(title="Model sweep (held-out accuracy)")
        for column in ("trees", "accuracy", "train s", ""):
            table.add_column(column)
        for trees, score, seconds in rows:
            table.add_row(str(trees), f"{score:.4f}", f"{seconds:.2f}", "best" if trees == best else "")
        self.console.print(table)

    @contextmanager
    def progress(self, totals: dict[str, int]) -> Iterator[Advance]:
        if self.console.is_terminal:
            with Progress(
                TextColumn("{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            ) as bar:
                ids = {name: bar.add_task(name, total=total) for name, total in totals.items()}
                yield lambda name, amount: bar.advance(ids[name], amount)
            return
        done = dict.fromkeys(totals, 0)

        def advance(name: str, amount: int) -> None:
            before = 4 * done[name] // max(totals[name], 1)
            done[name] += amount
            after = 4 * done[name] // max(totals[name], 1)
            if after > before:  # a line at every quarter passed, with the true share done
                share = 100 * done[name] // max(totals[name], 1)
                self.console.print(Text(f"  {name}: {done[name]}/{totals[name]} ({share}%)"))

        yield advance

    def summary(
        self,
        timings: Sequence[tuple[str, float, str]],
        verdict: str,
        match: bool,
        where: str,
        *,
        nodes_lost: Sequence[str] = (),
        reference: bool = True,
    ) -> None:
        """The closing block; ``nodes_lost``: IPs of the nodes that died while the explainers ran."""
        table = Table(title="Timings")
        for column in ("step", "wall s", "note"):
            table.add_column(column)
        for name, seconds, note in timings:
            table.add_row(Text(name), f"{seconds:.2f}", Text(note))
        self.console.print(table)
        if reference:
            self.console.print(
                "[dim]The two explainers run at the same time on the same CPUs: compare their CPU seconds, "
                "or run benchmarks/kernel_shap.py for each alone.[/]",
                soft_wrap=True,
            )
        if nodes_lost:
            count = len(nodes_lost)
            self.warn(
                f"{count} node{'s' if count > 1 else ''} lost during the run ({', '.join(nodes_lost)}); "
                f"{'its' if count == 1 else 'their'} tasks were retried."
            )
        colour = "green" if match else "red"
        self.console.print(Text(verdict, style=f"bold {colour}"), soft_wrap=True)
        self.console.print(Text(f"Results: {where}"), soft_wrap=True)
