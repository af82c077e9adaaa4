"""Every mutant of tests/mutants.py still applies: its text occurs exactly once in its file, so a
refactor cannot leave a mutant stale (reported as a survivor) without this failing."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import mutants  # noqa: E402


@pytest.mark.parametrize("name", list(mutants.MUTANTS))
def test_mutant_applies_exactly_once(name):
    file, old, new, tests = mutants.MUTANTS[name]
    text = (ROOT / "ep_compile" / file).read_text()
    assert text.count(old) == 1, f"mutant {name!r}: {old!r} occurs {text.count(old)} times in ep_compile/{file}"
    assert old != new and all((ROOT / t).exists() for t in tests)
