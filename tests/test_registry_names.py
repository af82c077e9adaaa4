"""The registry is the one source of what an estimator can do: no module compares an estimator's
name as a string (callers read registry.entry(name)'s capabilities instead)."""

import re
from pathlib import Path

import ep_compile  # noqa: F401  (registers every estimator)
from ep_compile.registry import ENTRIES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(  # every module but the registry itself
    p
    for d in ("ep_compile", "experiments", "benchmarks", "export")
    for p in (ROOT / d).rglob("*.py")
    if p.name != "registry.py"
)


def name_tests(line: str) -> list[str]:
    """The registered names this line tests a string against (==, !=, in a literal tuple, startswith)."""
    hits = []
    for name in ENTRIES:
        q = rf"[\"']{re.escape(name)}[\"']"
        for m in re.finditer(
            rf"([\w.\[\]\"']+)(?:\s*(?:==|!=)|\s+(?:not\s+in|in)\s)\s*[\(\[\{{]?[^)\]\}}=]*?{q}", line
        ):
            left = m.group(1)
            if left.endswith("rule") or re.search(rf"\bfor\b[^:]*\b{re.escape(left)}\s+in\b", line):
                continue  # a rule (registry field) compared, or a loop over names: not a test of a name
            hits.append(name)
            break
        if re.search(rf"{q}\s*(==|!=)", line):
            hits.append(name)
    if re.search(r"\.startswith\(\s*[\"'](spiking|c-|kp-|vf)", line):
        hits.append("a name prefix")
    return hits


def test_no_estimator_name_is_compared_as_a_string():
    found = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()} ({', '.join(h)})"
        for p in SOURCES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if (h := name_tests(line)) and "register(" not in line
    ]
    assert not found, "\n".join(found)


def test_the_check_catches_each_form():
    for line in (
        'if est == "bptt":',
        "x = name != 'holomorphic'",
        'if e in ("vf", "vf-one-sided"):',
        'n.startswith("spiking-")',
    ):
        assert name_tests(line), line
    assert not name_tests("if entry(name).unrolled:")
