"""The Wilson et al. construction and Lemmas 2-3, the Fig. 2 claim checks, and smoke runs of
every theory experiment through Hydra's compose API (tiny sizes)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dissecting_adam.theory import fig2, fig3, wilson
from dissecting_adam.theory import fig2_caption as claims

CONF = Path(__file__).resolve().parents[1] / "conf" / "theory"


# --- Wilson et al. construction, Lemmas 2-3 ------------------------------------------------


@pytest.fixture(scope="module")
def data():
    r = np.random.default_rng(0)
    y = wilson.sample_labels(12, 0.7, r, majority=True)
    y_test = wilson.sample_labels(400, 0.7, r, majority=False)
    return wilson.design(y), y, y_test


def test_construction_satisfies_lemma2_condition(data):
    X, y, _ = data
    assert y.sum() > 0
    assert X.shape == (12, 3 + int((y > 0).sum()) + 5 * int((y < 0).sum()))
    # each row: the label, two ones, then one (y = +1) or five (y = -1) private features
    np.testing.assert_array_equal(X.sum(1), np.where(y > 0, 1 + 2 + 1, -1 + 2 + 5))
    assert np.all((X[:, 3:] > 0).sum(0) == 1)  # every private feature belongs to one example
    check = wilson.check_construction(X, y)
    assert check == {"c": 4.0, "residual": 0.0, "min_abs_Xty": 1.0}


def test_construction_fails_without_a_positive_majority():
    y = np.array([1.0, -1.0, -1.0])
    check = wilson.check_construction(wilson.design(y), y)
    assert check["residual"] > 0  # X sign(X^T y) is no longer a multiple of y


def run(method, data, lr, steps=150):
    X, y, y_test = data
    return wilson.run_method(method, lr, X, y, y_test, steps)


@pytest.mark.parametrize(
    ("method", "lr", "tol"),
    [("sign", 0.003, 1e-12), ("mssd", 0.003, 1e-12), ("adam", 0.003, 1e-6),
     ("rmsprop", 0.003, 1e-6), ("adagrad", 0.03, 1e-6)],
)  # fmt: skip
def test_sign_based_iterates_stay_proportional_to_sign_Xty(data, method, lr, tol):
    """Lemma 3 (sign descent; M-SSD by the same argument) and Lemma 2 (Adam, RMSProp, Adagrad;
    exact up to their eps): theta_t ∝ sign(X^T y); they predict the majority class."""
    h = run(method, data, lr)
    assert h["max_deviation_pre"] <= tol and h["max_deviation"] <= tol
    X, y, y_test = data
    theta = h["theta"]
    c = theta @ np.sign(X.T @ y) / len(theta)
    np.testing.assert_allclose(theta, c * np.sign(X.T @ y), rtol=10 * tol, atol=0)
    assert np.all(wilson.test_scores(theta, y_test) > 0)  # every test point called positive
    assert h["test_error"][-1] == pytest.approx(np.mean(y_test < 0))


@pytest.mark.parametrize("method", ["gd", "msgd", "msvag"])
def test_gradient_methods_leave_the_line_and_generalise(data, method):
    h = run(method, data, 0.1, steps=400)
    assert h["deviation"][1] > 0.1  # the first step already leaves the line
    assert h["test_error"][-1] == 0.0


def test_msvag_first_step_is_a_gradient_step(data):
    gd, msvag = run("gd", data, 0.1, steps=1), run("msvag", data, 0.1, steps=1)
    np.testing.assert_array_equal(gd["theta"], msvag["theta"])
    two = run("gd", data, 0.1, steps=2), run("msvag", data, 0.1, steps=2)
    assert not np.array_equal(two[0]["theta"], two[1]["theta"])  # afterwards they differ


def test_line_deviation():
    u = np.array([1.0, -1.0, 1.0])
    assert wilson.line_deviation(2.5 * u, u) == pytest.approx(0.0, abs=1e-15)
    assert wilson.line_deviation(np.zeros(3), u) == 0.0
    assert wilson.line_deviation(np.array([1.0, 1.0, 0.0]), u) == pytest.approx(1.0)


# --- Fig. 2 claim checks -------------------------------------------------------------------


def fake_final_values(ratios: dict) -> pd.DataFrame:
    """final_values rows where value_SSD / value_SGD = ratios[(spectrum, basis, noise)]."""
    rows = []
    for (spectrum, basis, nu), r in ratios.items():
        for seed in range(3):
            rows.append((spectrum, basis, nu, "sgd", seed, 7, 1.0 + seed))
            rows.append((spectrum, basis, nu, "ssd", seed, 7, r * (1.0 + seed)))
    return pd.DataFrame(rows, columns=["spectrum", "basis", "noise", "method", "seed", "step",
                                       "value"])  # fmt: skip


def paper_like():
    """Caption-like ratios: SGD >> SSD (well, nu = 0), else even; SSD >> SGD (ill/aligned)."""
    r = {}
    for nu in (0.0, 0.1, 4.0):
        r["well", "aligned", nu] = r["well", "rotated", nu] = 1e3 if nu == 0 else 1.2
        r["ill", "rotated", nu] = 0.8
        r["ill", "aligned", nu] = 0.05
    return r


@pytest.mark.parametrize(
    ("override", "verdicts"),
    [
        ({}, ["holds", "holds", "holds"]),
        ({("ill", "aligned", 0.1): 1.0}, ["holds", "holds", "partly holds"]),
        ({("ill", "rotated", 0.0): 12.0, ("ill", "rotated", 0.1): 5.0,
          ("ill", "rotated", 4.0): 0.1}, ["holds", "fails", "holds"]),
        ({("well", "rotated", 4.0): 0.2}, ["partly holds", "holds", "holds"]),
    ],
)  # fmt: skip
def test_claim_verdicts_follow_the_numbers(override, verdicts):
    df = fake_final_values(paper_like() | override)
    got = [c["verdict"] for c in claims.check_claims(df, 7, claims.Thresholds())]
    assert got == verdicts


def test_paired_ratio_is_geometric_mean_with_floor():
    df = fake_final_values({("well", "aligned", 0.0): 4.0})
    df.loc[(df.method == "sgd") & (df.seed == 0), "value"] = 0.0  # floored to 1e-12
    tab = claims.paired_ratios(df, 7, 1e-12).iloc[0]
    assert tab["ratio"] == pytest.approx((4e12 * 4.0 * 4.0) ** (1 / 3))
    assert tab["ssd_wins"] == 0 and tab["n_seeds"] == 3


# --- smoke runs through Hydra's compose API ------------------------------------------------


def compose(name, overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name=name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def test_fig2_smoke(tmp_path):
    cfg = compose("fig2", ["d=6", "steps=12", "seeds=[0,1]", "claim_steps=[5,12]", "n_jobs=1"])
    paths = fig2.experiment(cfg, tmp_path)
    df = pd.read_csv(paths["csv"])
    assert list(df.columns) == ["spectrum", "basis", "noise", "method", "seed", "step", "value"]
    assert set(df.spectrum) == {"well", "ill"} and set(df.basis) == {"aligned", "rotated"}
    assert set(df.method) == {"sgd", "ssd"} and set(df.noise) == {0.0, 0.1, 4.0}
    assert set(df.step) == {0, 5, 10, 12} and set(df.seed) == {0, 1}  # record + claim steps
    assert (df.groupby(["spectrum", "basis", "noise", "method", "seed"]).size() == 4).all()
    text = paths["claims"].read_text()
    assert text.count("## At step") == 2 and "holds" in text
    for key in ("pdf", "png", "meta"):
        assert paths[key].stat().st_size > 0


def test_fig3_smoke(tmp_path):
    paths = fig3.experiment(compose("fig3", ["n_points=11"]), tmp_path)
    assert len(pd.read_csv(paths["csv"])) == 11 and paths["png"].stat().st_size > 0


def test_wilson_smoke(tmp_path):
    cfg = compose("wilson", ["n_train=8", "n_test=50", "steps=30", "seeds=[0]"])
    paths = wilson.experiment(cfg, tmp_path)
    table = pd.read_csv(paths["csv"])
    assert set(table.method) == set(cfg["lrs"])
    assert table.set_index("method").loc["sign", "stays_on_line"]
    assert not table.set_index("method").loc["gd", "stays_on_line"]
    assert "| sign |" in paths["md"].read_text() and paths["png"].stat().st_size > 0
