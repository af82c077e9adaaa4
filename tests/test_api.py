"""The public Python API: the README's "Use it from Python" program as written, and EPNet's input."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import ep_compile as ep

ROOT = Path(__file__).resolve().parents[1]


def readme_api_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("<!-- python-api-snippet -->\n```python\n", 1)[1].split("```", 1)[0]


def test_readme_snippet_is_the_example_and_runs(tmp_path):
    snippet = readme_api_snippet()
    assert snippet == (ROOT / "examples" / "quickstart.py").read_text()  # one program, two places
    (tmp_path / "snippet.py").write_text(snippet)
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    p = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    cosines = [float(v) for v in re.findall(r"cos\(EP, BPTT\) = ([-0-9.]+)", p.stdout)]
    assert len(cosines) == 3 and min(cosines) > 0.95, p.stdout  # symmetric EP at beta 0.5 vs BPTT
    accs = [float(v) for v in re.findall(r"test accuracy ([0-9.]+)", p.stdout)]
    assert len(accs) == 3 and accs[-1] > 0.8, p.stdout  # three epochs on the real digits
    sess = ort.InferenceSession(str(tmp_path / "quickstart.onnx"))
    _, test = ep.load_source("digits")
    x = np.zeros((4, 1, 8, 8), np.float32)
    scores, steps, _ = sess.run(None, {"x": x, "max_steps": np.array(30), "tol": np.array(0, np.float32)})
    assert scores.shape == (4, 10) and int(steps) == 30


def test_epnet_takes_a_dict_or_refuses_in_one_line():
    a = ep.EPNet(dict(ep.ARCHITECTURES["digits"]))
    b = ep.EPNet(ep.model_config("digits"))
    assert a.cfg == b.cfg
    with pytest.raises(ep.ConfigError, match="unknown model config keys \\['chanels'\\]"):
        ep.EPNet({"chanels": [4]})
    with pytest.raises(ep.ConfigError, match="EPNet takes a ModelConfig or a dict .* got str"):
        ep.EPNet("digits")


def test_public_names_resolve():
    for name in ep.__all__:
        assert getattr(ep, name) is not None, name
    assert set(ep.ESTIMATORS) == set(ep.ENTRIES) and "symmetric" in ep.ESTIMATORS
