"""The job's own output prints data- and user-supplied text literally (issue 12, fault 2's kind)."""

from __future__ import annotations

import io

from rich.console import Console

from app.report import Reporter


def test_brackets_in_names_paths_and_messages_print_as_themselves() -> None:
    out = io.StringIO()
    reporter = Reporter(Console(file=out, width=200, highlight=False))
    reporter.info("reading /data/[raw]/wine.csv")
    reporter.notice("column [bold] is text")
    reporter.warn("a [/x] value")
    reporter.step("etl", "3 rows x 2 features from /d/[2024]/w.csv", 0.5)
    reporter.summary([("etl [x]", 0.5, "note [y]")], "Verdict: match [z]", True, "/out/[run]")
    text = out.getvalue()
    for literal in ("/data/[raw]/wine.csv", "column [bold] is text", "a [/x] value", "/d/[2024]/w.csv",
                    "etl [x]", "note [y]", "Verdict: match [z]", "Results: /out/[run]"):  # fmt: skip
        assert literal in text, literal
