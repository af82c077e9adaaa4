"""python -m ep_compile.gradcheck: report format, float64, real digits, plot."""

import json

from ep_compile import gradcheck


def test_gradcheck_cli_json_and_plot(tmp_path):
    out, png = tmp_path / "gc.json", tmp_path / "gc.png"
    rc = gradcheck.main(
        [
            "--arch",
            "digits-small",
            "--data",
            "digits",
            "--batch",
            "4",
            "--T",
            "120",
            "--K",
            "20",
            "--betas",
            "0.2",
            "0.00001",
            "--estimators",
            "one-sided",
            "symmetric",
            "random-sign",
            "--dtype",
            "float64",
            "--seed",
            "1",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    rep = json.loads(out.read_text())
    rows = rep["results"]
    assert {r["layer"] for r in rows} == {"conv1", "conv2", "readout", "all"}
    assert {r["estimator"] for r in rows} == {"one-sided", "symmetric", "random-sign"}
    for r in rows:
        assert set(r) >= {"estimator", "beta", "layer", "rel_error", "sign_agreement"}
        assert 0.0 <= r["sign_agreement"] <= 1.0
    get = {(r["estimator"], r["beta"], r["layer"]): r for r in rows}
    # symmetric beats one-sided, and at small beta both are close to BPTT
    assert get[("symmetric", 0.2, "all")]["rel_error"] < get[("one-sided", 0.2, "all")]["rel_error"]
    assert get[("symmetric", 1e-5, "all")]["rel_error"] < 1e-8
    assert get[("one-sided", 1e-5, "all")]["rel_error"] < 1e-4
    assert get[("symmetric", 1e-5, "all")]["sign_agreement"] > 0.99
    assert len(get[("symmetric", 1e-5, "all")]["rel_error_per_step"]) == 20
    assert {"clamp_region_changes", "pool_winner_changes"} <= set(rep["changes"][0])
    # one figure per beta, each with the random-sign curve
    pngs = sorted(p.name for p in tmp_path.glob("gc_beta*.png"))
    assert pngs == ["gc_beta0.2.png", "gc_beta1e-05.png"] and not png.exists()
    assert all((tmp_path / p).stat().st_size > 10_000 for p in pngs)
