"""Fuzzing: mutated data, config and index files give the correct result or a nestrank error, never a traceback.

A few dozen hypothesis-drawn mutations per reader here (fast, derandomized); bench/reliability.py
runs a thousand or more each. The harness and the reference parsers are in tests/fuzzing.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzzing import INDEX_PLANS, PLANS, build_index, index_case, mutate, readers, run_case, without_checksums
from hypothesis import HealthCheck, given, settings

FAST = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
READERS = {reader.name: reader for reader in readers()}


@pytest.mark.parametrize("name", sorted(READERS))
def test_every_seed_reads_as_the_reference_reads_it(name: str, tmp_path: Path):
    assert run_case(READERS[name], READERS[name].seed, tmp_path) == ("correct", "")


@pytest.mark.parametrize("name", sorted(READERS))
def test_mutated_files_give_the_right_result_or_a_nestrank_error(name: str, tmp_path_factory):
    reader, workdir = READERS[name], tmp_path_factory.mktemp(name)

    @FAST
    @given(PLANS)
    def check(plan):
        outcome, detail = run_case(reader, mutate(reader.seed, plan), workdir)
        assert outcome in ("correct", "error"), f"{outcome}: {detail}"

    check()


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> tuple[Path, dict]:
    return build_index(tmp_path_factory.mktemp("index"))


def test_mutated_indexes_search_as_before_or_fail_clearly(index, tmp_path: Path):
    path, expected = index

    @settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(INDEX_PLANS)
    def check(plan):
        outcome, detail = index_case(path, expected, plan, tmp_path)
        assert outcome in ("correct", "error"), f"{outcome}: {detail}"

    check()


def test_indexes_without_checksums_never_give_a_traceback(index, tmp_path: Path):
    """An index of an older nestrank is not verified (damage can go unseen) but still fails as a nestrank error."""
    path, expected = index
    legacy = without_checksums(path, tmp_path / "legacy")

    @settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(INDEX_PLANS)
    def check(plan):
        outcome, detail = index_case(legacy, expected, plan, tmp_path)
        assert outcome != "traceback", detail

    check()
