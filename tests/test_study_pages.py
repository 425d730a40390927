"""scripts/study_pages.py: the results file every study script keeps, and the reading carried across runs."""

from __future__ import annotations

import json
import re

from tests.conftest import load_script


def test_a_new_run_keeps_the_reading_written_into_the_last_one(tmp_path):
    pages = load_script("study_pages")
    output = tmp_path / "study.json"
    first = pages.new_cache(output, "2 cores", rows={})
    assert first["read"] == "" and first["rows"] == {} and first["machine"] == "2 cores"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", first["date"])
    first["read"] = "Nothing wins."
    first["rows"]["a"] = {"auroc": 0.9}
    pages.save_cache(output, first)
    assert json.loads(output.read_text())["rows"] == {"a": {"auroc": 0.9}}
    again = pages.new_cache(output, "2 cores", rows={})
    assert again["read"] == "Nothing wins." and again["rows"] == {}
    assert pages.page_text(["# Study"], again) == "# Study\n\nNothing wins.\n"
