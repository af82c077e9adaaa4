"""Mutation check: does the test suite catch plausible wrong estimators?

    python tests/mutants.py                 # every mutant, its targeted test files, a table
    python tests/mutants.py --list          # the mutants only
    python tests/mutants.py --only kp-vf-forward-only --json mutants.json

Each mutant is one textual edit of ep_compile/ (a sign flip, a dropped factor, a mask ignored, a
wrong pool index, a swapped phase ...). The repository is copied to a temporary folder, the edit is
applied there, and pytest runs the named test files of the default suite against the copy (one
thread, stop at the first failure). A mutant survives when every test passes. Not part of the
default test run: about 10-15 minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ["tests/test_independent.py", "tests/test_estimators.py", "tests/test_dynamics.py"]
ASYM = ["tests/test_independent.py", "tests/test_asymmetric.py", "tests/test_vf_forms.py"]
CONT = ["tests/test_independent.py", "tests/test_continual.py"]

SKIP = ["tests/test_interactions.py"] + CORE

# name -> (file, old text, new text, test files that should catch it)
MUTANTS = {
    "skip-feedback-dropped": (
        "dynamics.py",
        "u = u + sk.feedback(dropped[sk.dst - 1], sk.feedback_ctx(dropped[n], ctx))",
        "u = u + 0 * sk.feedback(dropped[sk.dst - 1], sk.feedback_ctx(dropped[n], ctx))",
        SKIP,
    ),
    "skip-forward-dropped": ("dynamics.py", "                u = u + v\n", "                u = u + 0 * v\n", SKIP),
    "skip-feedback-forward-winners": (
        "dynamics.py",
        "u = u + sk.feedback(dropped[sk.dst - 1], sk.feedback_ctx(dropped[n], ctx))",
        "u = u + sk.feedback(dropped[sk.dst - 1], ctx)",
        SKIP,
    ),
    "strided-transpose-wrong-padding": (
        "layers.py",
        "t, self.w_back, stride=self.stride, padding=self.padding, output_padding=self.out_pad",
        "t, self.w_back, stride=self.stride, padding=0, output_padding=self.out_pad",
        SKIP,
    ),
    "skip-missing-from-phi": (
        "model.py",
        "return sum(layer.phi(layers[layer.src], layers[layer.dst]) for layer in self.interactions())",
        "return sum(layer.phi(layers[layer.src], layers[layer.dst]) for layer in self.layers)",
        SKIP,
    ),
    "colouring-ignores-skips": (
        "model.py",
        "        if a > 0:  # the input",
        "        if a > 0 and b == a + 1:  # the input",
        SKIP,
    ),
    "skip-transpose-wrong-pool-factor": (
        "layers.py",
        "post = F.max_unpool2d(post, ctx, f, f, output_size=self.conv_hw)",
        "post = F.max_unpool2d(post, ctx, 2, 1, output_size=self.conv_hw)",
        SKIP,
    ),
    "kp-vf-forward-only": (
        "estimators.py",
        "avg = 0.5 * (g[i_f] + gbk)",
        "avg = g[i_f]",
        ASYM,
    ),
    "kp-vf-backward-with-forward-weight": (
        "estimators.py",
        "layer.phi_b(layers[layer.src], layers[layer.dst]) for layer in backs)",
        "layer.phi(layers[layer.src], layers[layer.dst]) for layer in backs)",
        ASYM,
    ),
    "vf-backward-zero": (
        "estimators.py",
        "g = g + (layer.feedback(layers[b], ctx) * delta[a - 1]).sum()",
        "g = g + 0 * (layer.feedback(layers[b], ctx) * delta[a - 1]).sum()",
        ASYM,
    ),
    "vf-backward-forward-indices": (
        "estimators.py",
        "ctx = layer.feedback_ctx(layers[a], layer(layers[a])[1])",
        "ctx = layer(layers[a])[1]",
        ASYM,
    ),
    "vf-paper-code-one-phase": (
        "estimators.py",
        "layer.phi_b(pre_b[a - 1], layers[b]) - layer.phi_b(pre_a[a - 1], layers[b])",
        "layer.phi_b(pre_b[a - 1], layers[b]) - layer.phi_b(pre_b[a - 1], layers[b])",
        ASYM,
    ),
    "vf-all-on-forward": (
        "estimators.py",
        "        return param_grads(f, params)\n",
        "        gs = param_grads(f, params)\n"
        "        ix = {id(p): i for i, p in enumerate(params)}\n"
        "        for L in model.layers:\n"
        "            if L.weight_b is not None:\n"
        "                i_f, i_b = ix[id(L.weight_f)], ix[id(L.weight_b)]\n"
        "                gs[i_f], gs[i_b] = gs[i_f] + gs[i_b], torch.zeros_like(gs[i_b])\n"
        "        return gs\n",
        ASYM,
    ),
    "gradcheck-reference-one-step": (
        "gradcheck.py",
        "for row in compare(model, ests[-1], ref_steps[-1]):",
        "for row in compare(model, ests[-1], ref_steps[0]):",
        ["tests/test_asymmetric.py", "tests/test_gradcheck.py"],
    ),
    "feedback-forward-pool-indices": (
        "layers.py",
        'if self.weight_b is None or self.pool != "max":',
        "if True:",
        ASYM,
    ),
    "ep-ignores-dropout-masks": (
        "estimators.py",
        "_F_diff(model, x, y, s_a, beta_a, s_b, beta_b, masks, model.phi, loss), list(model.parameters())",
        "_F_diff(model, x, y, s_a, beta_a, s_b, beta_b, None, model.phi, loss), list(model.parameters())",
        CORE,
    ),
    "ep-dropped-half": (
        "estimators.py",
        "return (F(s_b, beta_b) - F(s_a, beta_a)) / (beta_a - beta_b)",
        "return (F(s_b, beta_b) - F(s_a, beta_a)) / (beta_a - beta_b) * 2",
        CORE,
    ),
    "ep-loss-term-sign": (
        "estimators.py",
        "f = f - beta * model.loss(s, y, masks)",
        "f = f + beta * model.loss(s, y, masks)",
        CORE,
    ),
    "symmetric-swapped-phases": (
        "estimators.py",
        "return RULES[rule](model, x, y, s_neg, -beta, s_pos, beta, masks, s_star=s_free, **kw)",
        "return RULES[rule](model, x, y, s_pos, -beta, s_neg, beta, masks, s_star=s_free, **kw)",
        CORE,
    ),
    "nudge-sign": (
        "dynamics.py",
        "u = u - b * model.dloss_ds(states, y, masks)",
        "u = u + b * model.dloss_ds(states, y, masks)",
        CORE,
    ),
    "nudge-scaled": (
        "dynamics.py",
        "u = u - b * model.dloss_ds(states, y, masks)",
        "u = u - 2 * b * model.dloss_ds(states, y, masks)",
        CORE,
    ),
    "masks-not-applied-to-drive": (
        "dynamics.py",
        "            u = u * masks[n]\n",
        "            u = u\n",
        CORE,
    ),
    "slope-one": (
        "model.py",
        '"hard-sigmoid": (0.5, 0.0, 1.0),',
        '"hard-sigmoid": (1.0, 0.0, 1.0),',
        CORE + ["tests/test_config.py"],
    ),
    "avg-unpool-no-quarter": (
        "layers.py",
        'up = repeat(post, "b c h w -> b c (h i) (w j)", i=f, j=f) / (f * f)',
        'up = repeat(post, "b c h w -> b c (h i) (w j)", i=f, j=f)',
        CORE,
    ),
    "random-sign-always-positive": (
        "estimators.py",
        "sign = 1.0 if torch.randint(0, 2, (1,), generator=generator, device=dev).item() else -1.0",
        "sign = 1.0",
        CORE,
    ),
    "bptt-one-step-too-many": (
        "estimators.py",
        "s = relax(model, x, model.init_states(x.shape[0], x), phases.T - k, masks, step_fn=step_fn)",
        "s = relax(model, x, model.init_states(x.shape[0], x), phases.T - k + 1, masks, step_fn=step_fn)",
        CORE,
    ),
    "dropout-unscaled": (
        "model.py",
        "masks.append((keep >= p).to(like.dtype) / (1 - p))",
        "masks.append((keep >= p).to(like.dtype))",
        CORE,
    ),
    "spiking-scaled-by-two": (
        "spiking.py",
        "grads = ep_gradient(model, x, y, neg.rates, -b, pos.rates, b, masks)",
        "grads = [2 * g for g in ep_gradient(model, x, y, neg.rates, -b, pos.rates, b, masks)]",
        ["tests/test_independent.py", "tests/test_spiking.py"],
    ),
    "c-ep-readout-not-halved": (
        "continual.py",
        "                    0.5 if two_sided else 1.0,\n",
        "                    1.0,\n",
        CONT,
    ),
    "c-vf-pre-from-next-step": (
        "continual.py",
        "RULES[rule](model, x, y, s, 0.0, new, d, masks, s_star=s, loss=False)",
        "RULES[rule](model, x, y, s, 0.0, new, d, masks, s_star=new, loss=False)",
        CONT,
    ),
    "wd-compensation-exponent": (
        "optim.py",
        '(1 - group["lr"] * group["weight_decay"]) ** (K - 1 - k)',
        '(1 - group["lr"] * group["weight_decay"]) ** (K - k)',
        CONT,
    ),
    # how an iteration applies an estimate (registry.Entry.iterate, which the trainer calls): a
    # time-local rule applied once at the end, a one-shot estimate never applied
    "iterate-time-local-applied-once": (
        "registry.py",
        "if self.time_local:\n            return self.fn(model, x, y, phases, apply_update=apply_update, **kw)",
        "if False:\n            return self.fn(model, x, y, phases, apply_update=apply_update, **kw)",
        ["tests/test_continual.py"],
    ),
    "iterate-one-shot-estimate-not-applied": (
        "registry.py",
        "        apply_update(est.grads, 0, 1)\n",
        "",
        ["tests/test_continual.py"],
    ),
    # the even/odd step reuses forward terms across its colour classes: a stale one must be caught
    "evenodd-reuses-stale-forward-terms": (
        "dynamics.py",
        "fwd = [None if syn.src - 1 in cls else f for syn, f in zip(model.interactions(), fwd)]",
        "fwd = [f for syn, f in zip(model.interactions(), fwd)]",
        SKIP,
    ),
    # --amp bf16-free: the nudged phases, whose difference is the estimate, must stay in float32
    "bf16-free-nudged-phases-in-bf16": (
        "estimators.py",
        'phases.amp == "bf16" or (phases.amp == "bf16-free" and not nudged)',
        'phases.amp in ("bf16", "bf16-free")',
        ["tests/test_compile.py"],
    ),
    # randomness on the device (tests/test_fake_cuda.py): a draw from the host generator, a host draw
    "dropout-masks-from-the-host-generator": (
        "trainer.py",
        "gen = step_generator(self.cfg.run.seed, epoch, step, self.device)",
        "gen = gen",
        ["tests/test_fake_cuda.py"],
    ),
    "spiking-quantizer-drawn-on-the-host": (
        "spiking.py",
        "torch.rand(s.shape, generator=generator, dtype=s.dtype, device=s.device)",
        "torch.rand(s.shape, generator=generator, dtype=s.dtype).to(s.device)",
        ["tests/test_fake_cuda.py"],
    ),
    # the order of the time-local rule at a finite rate (test_c_ep_trajectory_at_a_finite_rate_...)
    "c-ep-weights-frozen-in-the-phase": (
        "continual.py",
        "        update(g, k, K)\n        total = g if total is None",
        "        total = g if total is None",
        CONT,
    ),
    "c-ep-readout-in-the-first-increment": (
        "continual.py",
        "        if k == K - 1:\n            g = [a + r for a, r in zip(g, readout_gradient(",
        "        if k == 0:\n            g = [a + r for a, r in zip(g, readout_gradient(",
        CONT,
    ),
    # the order of C-VF / C-KPVF at a finite rate (test_c_vf_and_c_kpvf_trajectories_at_a_finite_rate_...)
    "time-local-update-one-step-late": (
        "continual.py",
        "        update(g, k, K)\n        total = g if total is None",
        "        if k > 0:\n            update(late, k - 1, K)\n        late = g\n        total = g if total is None",
        CONT,
    ),
    "c-symmetric-weights-reset-between-phases": (
        "continual.py",
        "            for sign in (1.0, -1.0) if two_sided else (1.0,):\n",
        "            start = [p.detach().clone() for p in params]\n"
        "            for sign in (1.0, -1.0) if two_sided else (1.0,):\n"
        "                with torch.no_grad():\n"
        "                    for p, v in zip(params, start):\n"
        "                        p.copy_(v)\n",
        CONT,
    ),
    "c-symmetric-second-phase-from-the-first-end": (
        "continual.py",
        "                total, _ = time_local_phase(",
        "                total, s_free = time_local_phase(",
        CONT,
    ),
}


def run_mutant(name: str, timeout: int) -> dict:
    file, old, new, tests = MUTANTS[name]
    with tempfile.TemporaryDirectory(prefix=f"mutant-{name}-") as tmp:
        tmp = Path(tmp)
        for part in ("ep_compile", "tests", "experiments"):
            shutil.copytree(ROOT / part, tmp / part, ignore=shutil.ignore_patterns("__pycache__"))
        src = tmp / "ep_compile" / file
        text = src.read_text()
        if text.count(old) != 1:
            return {"mutant": name, "status": "stale", "detail": f"{old!r} found {text.count(old)} times in {file}"}
        src.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(tmp), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        # the copy has no pyproject.toml: its addopts (the default set, not the slow one) are given here
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider", *tests]
        t0 = time.time()
        try:
            p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"mutant": name, "status": "timeout", "seconds": timeout}
        # make sure the copy, not the installed package, was tested
        probe = subprocess.run(
            [sys.executable, "-c", "import ep_compile; print(ep_compile.__file__)"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not probe.startswith(str(tmp)):
            return {"mutant": name, "status": "error", "detail": f"imported {probe}, not the mutated copy"}
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("FAILED") or ln.startswith("ERROR")]
        status = "killed" if p.returncode != 0 else "survived"
        return {"mutant": name, "status": status, "seconds": round(time.time() - t0, 1), "caught_by": lines[:1]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--only", nargs="+", default=None, help="run only these mutants")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.list:
        for name, (file, _, _, tests) in MUTANTS.items():
            print(f"{name:<36} ep_compile/{file:<15} {' '.join(tests)}")
        return 0
    names = args.only or list(MUTANTS)
    bad = [n for n in names if n not in MUTANTS]
    if bad:
        print(f"mutants.py: error: unknown mutant(s) {bad}; --list shows them", file=sys.stderr)
        return 2
    results = []
    for name in names:
        r = run_mutant(name, args.timeout)
        results.append(r)
        print(
            f"{name:<36} {r['status']:<9} {r.get('seconds', '')!s:>6}  {' '.join(r.get('caught_by', []))[:90]}",
            flush=True,
        )
    survivors = [r["mutant"] for r in results if r["status"] != "killed"]
    print(f"{len(results)} mutants, {len(results) - len(survivors)} killed, survivors: {survivors or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
