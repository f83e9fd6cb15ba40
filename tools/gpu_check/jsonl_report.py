"""A pytest plugin (``-p jsonl_report``): each test's outcome appended to $GPU_CHECK_JSONL as it finishes, one JSON
line per test ({"nodeid", "outcome", "seconds", "message"}), and one per collected test under --collect-only
({"outcome": "collected"}). A run killed part-way keeps the lines of the tests that finished."""
from __future__ import annotations

import json
import os


def _write(record: dict) -> None:
    path = os.environ.get("GPU_CHECK_JSONL")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "error" if report.when == "setup" and report.failed else report.outcome
        message = str(report.longrepr)[-1500:] if report.longrepr else None
        _write({"nodeid": report.nodeid, "outcome": outcome, "seconds": round(report.duration, 3),
                "message": message})


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        for item in session.items:
            _write({"nodeid": item.nodeid, "outcome": "collected"})
