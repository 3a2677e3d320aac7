"""Sandbox (acml_ray/sandbox.py): a child process whose death costs only the rows that cause it."""

from __future__ import annotations

import os
import time

import pytest

from acml_ray.chem import GraphFeaturizer, MolGraph, Rejected
from acml_ray.sandbox import Sandbox, crash_reason

MARK = "ABORT-HERE"  # the marked row of the crash hook below


def featurise_or_abort(items: list[str]) -> list[MolGraph | Rejected]:
    """The crash hook: a real os.abort() (SIGABRT, as a failed native assertion) for a batch
    holding the marked row; the real featuriser otherwise."""
    if MARK in items:
        os.abort()
    return GraphFeaturizer().featurize_batch(items)


def sleep_if_marked(items: list[str]) -> list[str]:
    if MARK in items:
        time.sleep(600)
    return items


def raise_value_error(items: list[str]) -> list[str]:
    raise ValueError("a bug, not a crash")


def crashed(item: object, reason: str) -> Rejected:
    return Rejected.of(0, item, reason)


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(retries=1, timeout_s=20, memory_mb=2048, preload=["acml_ray.chem.featurizer"])
    yield box
    box.close()


def test_abort_costs_only_the_marked_row(sandbox, chembl_drugs) -> None:
    drugs = chembl_drugs["smiles"].dropna().head(15).tolist()
    batch = drugs[:6] + [MARK] + drugs[6:]
    before = sandbox.crashes
    out = sandbox.map(featurise_or_abort, batch, crashed)
    assert len(out) == 16
    assert isinstance(out[6], Rejected) and out[6].reason == "worker crashed: SIGABRT"
    assert out[6].input == MARK
    expected = GraphFeaturizer().featurize_batch(drugs)
    for got, want in zip(out[:6] + out[7:], expected):
        assert type(got) is type(want)
        if isinstance(want, MolGraph):
            assert got.equals(want)
    # Bounded: 2 tries of the whole batch, then one crash per bisection level (16 -> 1: 4 levels).
    assert sandbox.crashes - before == 2 + 4
    # The sandbox recovers: the next batch runs in a fresh child.
    assert isinstance(sandbox.map(featurise_or_abort, ["CCO"], crashed)[0], MolGraph)


def test_every_row_crashing_is_every_row_quarantined(sandbox) -> None:
    out = sandbox.map(featurise_or_abort, [MARK, MARK], crashed)
    assert [r.reason for r in out] == ["worker crashed: SIGABRT"] * 2


def test_hung_batch_times_out_and_bugs_propagate() -> None:
    # A fresh child imports this test module on its first call: give it seconds for that.
    box = Sandbox(retries=0, timeout_s=5)
    try:
        out = box.map(sleep_if_marked, ["a", MARK], crashed)
        assert out[0] == "a"
        assert out[1].reason == "worker timed out: no result after 5 s"
        with pytest.raises(ValueError, match="a bug, not a crash"):  # an exception is not a crash
            box.map(raise_value_error, ["x"], crashed)
        assert box.map(sleep_if_marked, [], crashed) == []
    finally:
        box.close()


def test_crash_reason_names_the_signal() -> None:
    assert crash_reason(-11) == "worker crashed: SIGSEGV"
    assert crash_reason(-9) == "worker crashed: SIGKILL"
    assert crash_reason(3) == "worker crashed: exit code 3"
