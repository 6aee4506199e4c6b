"""The reports wing: what a campaign's store says, for people.

- ``results.tsv`` (:mod:`.results`), the final summary (:mod:`.summary`), ``hypotheses.md``
  (:mod:`.hypotheses`): written by the campaign as it runs and when it ends;
- ``findings.md`` + ``plots/`` (:mod:`.findings`, from :mod:`.analysis`, :mod:`.effects`,
  :mod:`.slices`, :mod:`.render`, :mod:`.plots`): at the end, and by ``hybrid report``;
- the strategy comparison of a multirun (:mod:`.compare`, :mod:`.compare_render`): ``hybrid compare``;
- one reader of a finished (or running) campaign's store (:mod:`.reader`), shared by all of them
  and by the warm start.

Every report judges "best", the baseline, failures and throughput, and formats values, through
:mod:`hybrid.history`; the wing never imports the proposers (nor they it), the surrogate or the
tracking: the GP of the response slices and the MLflow uploader are handed in by the caller.
"""

from __future__ import annotations

from hybrid.reports.compare import compare_command, compare_sweep
from hybrid.reports.findings import report_command, write_reports
from hybrid.reports.hypotheses import write_hypotheses_md
from hybrid.reports.results import write_results_tsv
from hybrid.reports.summary import Summary, summarize, write_summary

__all__ = [
    "Summary", "compare_command", "compare_sweep", "report_command", "summarize", "write_hypotheses_md",
    "write_reports", "write_results_tsv", "write_summary",
]
