"""The claim family's decision rule, its sign wiring, and the coverage of the intervals that feed it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from negdiff.bootstrap import Interval, from_draws, mean_t, pooled, stratum_mean_draws, t_interval
from negdiff.contrasts import Contrasts
from negdiff.decide import Claim, decide, mde
from negdiff.experiments.ablate.stats import build_claims, match_check


def _iv(est: float, se: float, n: int = 500) -> Interval:
    return t_interval(est, se, n - 1, n, "items", "test")


# ------------------------------------------------------------------------------------------ decision states
def test_every_state_from_its_evidence():
    claims = [
        Claim("h", "holds", -1, "r", _iv(-1.0, 0.1), margin=0.1),
        Claim("o", "opposite", -1, "r", _iv(+1.0, 0.1), margin=0.1),
        Claim("e", "equivalent", -1, "r", _iv(0.001, 0.01), margin=0.1),
        Claim("i", "inconclusive", -1, "r", _iv(-0.1, 0.1), margin=0.1),
        Claim("g", "gated", -1, "r", _iv(-1.0, 0.1), margin=0.1, gate="control not matched: test"),
        Claim("s", "small", -1, "r", mean_t(np.array([-1.0, -2, -3]))),
        Claim("x", "not run", -1, "r", None),
    ]
    recs = {r["id"]: r for r in decide(claims)}
    assert [recs[k]["verdict"] for k in "hoeigsx"] == ["holds", "opposite", "does not hold", "inconclusive",
                                                       "control not matched", "n too small", "not run"]
    assert all(r["family_size"] == 7 for r in recs.values())
    # the inconclusive claim says what it ruled out (the claimed-side bound) and its MDE at alpha / m
    lo = recs["i"]["ci"][0]
    assert "below" in recs["i"]["ruled_out"] and f"{lo:+.4g}" in recs["i"]["ruled_out"]
    want = (stats.t.ppf(1 - 0.05 / 7, 499) + stats.t.ppf(0.8, 499)) * 0.1
    assert recs["i"]["mde"] == pytest.approx(want)
    assert recs["h"]["ci_note"] == "95%, unadjusted"


def test_borderline_when_monte_carlo_error_straddles_alpha():
    rng = np.random.default_rng(0)
    # draws whose one-sided p sits right at 0.05 / 1 (family of one): MC error of 1000 draws covers alpha
    draws = rng.normal(-1.645, 1.0, 1000)
    iv = from_draws(-1.645, draws, 200, "items", "test", 0)
    rec = decide([Claim("b", "b", -1, "r", iv)])[0]
    assert abs(rec["p_one_sided"] - 0.05) < 2 * iv.mcse
    assert rec["verdict"] == "borderline"


def test_holm_controls_the_family_not_each_claim():
    # each p = 0.03 would pass alone at 0.05; with 3 claims Holm needs p <= 0.05 / 3 for the smallest
    z = stats.t.isf(0.03, 999)
    claims = [Claim(str(k), "c", +1, "r", _iv(z * 0.1, 0.1, 1000)) for k in range(3)]
    recs = decide(claims)
    assert all(r["p_one_sided"] == pytest.approx(0.03) for r in recs)
    assert all(r["p_adjusted"] == pytest.approx(0.09) for r in recs)
    assert {r["verdict"] for r in recs} == {"inconclusive"}
    assert decide(claims[:1])[0]["verdict"] == "holds"


def test_intersection_union_needs_both_halves():
    good, bad = _iv(-1.0, 0.1), _iv(-0.05, 0.1)
    both = Claim("dd", "dd", +1, "both", halves=[Claim("a", "a", -1, "r", good), Claim("b", "b", -1, "r", good)])
    one = Claim("dd", "dd", +1, "both", halves=[Claim("a", "a", -1, "r", good), Claim("b", "b", -1, "r", bad)])
    assert decide([both])[0]["verdict"] == "holds"
    rec = decide([one])[0]
    assert rec["verdict"] == "inconclusive"
    assert rec["p_one_sided"] == pytest.approx(bad.p_less)  # the larger of the halves' p
    assert [h["id"] for h in rec["halves"]] == ["a", "b"]


def test_mde_scales_with_standard_error():
    a, b = _iv(0.0, 0.1), _iv(0.0, 0.2)
    assert mde(b, 0.01) == pytest.approx(2 * mde(a, 0.01))


# ------------------------------------------------------------------------------------------ intervals
def test_stratified_draws_reproduce_a_hand_resample():
    values = np.array([[1.0, 2, 3, 10, 20], [0.0, 0, 1, 1, 1]])
    strata = np.array(["a", "a", "a", "b", "b"])
    draws, point, sizes = stratum_mean_draws(values, strata, n_boot=7, seed=3)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(3).spawn(2)]
    ia = rngs[0].integers(0, 3, size=(7, 3))
    ib = rngs[1].integers(0, 2, size=(7, 2))
    # each stratum's draws stretched about its mean by sqrt(m / (m - 1)) (the rescaling bootstrap)
    assert draws[4, 0, 0] == pytest.approx(2.0 + np.sqrt(3 / 2) * (values[0, :3][ia[4]].mean() - 2.0))
    assert draws[4, 1, 1] == pytest.approx(1.0 + np.sqrt(2) * (values[1, 3:][ib[4]].mean() - 1.0))
    assert list(sizes) == [3, 2] and point[0].tolist() == [2.0, 15.0]


def test_stratified_percentile_interval_covers_with_five_items_per_stratum():
    """67 strata of 5 items (the dose sweep's BLiMP size), heavy-tailed scores: the plain stratified resample
    covers ~92% (its variance is (m - 1)/m of the truth); the rescaled draws cover the nominal 95%."""
    rng = np.random.default_rng(1)
    h, m, reps = 67, 5, 400
    mu = rng.normal(0, 1, h)
    strata = np.repeat(np.arange(h), m)
    cover = plain = 0
    for r in range(reps):
        x = (mu[:, None] + rng.standard_t(4, size=(h, m))).ravel()
        draws, point, sizes = stratum_mean_draws(x, strata, 1000, seed=r)
        d, p = pooled(draws, sizes)[:, 0], pooled(point, sizes)[0]
        lo, hi = np.quantile(d, [0.025, 0.975])
        cover += lo <= mu.mean() <= hi
        raw = p + np.sqrt((m - 1) / m) * (d - p)  # undo the stretch: what a plain resample gives
        lo, hi = np.quantile(raw, [0.025, 0.975])
        plain += lo <= mu.mean() <= hi
    assert cover / reps >= 0.94 and plain / reps <= 0.93


def test_lone_items_are_resampled_together():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    draws, point, sizes = stratum_mean_draws(values, np.array(["a", "a", "b", "c", "d", "e"]), 200, seed=0)
    assert sorted(sizes.tolist()) == [2, 4] and np.std(pooled(draws, sizes)) > 0


def test_window_t_interval_covers_under_autocorrelated_token_losses():
    """n = 10 windows (the smallest allowed) of 256 tokens; per-token losses lognormal (skewed) with AR(1)
    phi = 0.95 inside each window (an effective sample of a few tokens per window), and the ablation's extra
    loss proportional to the loss plus noise. The t-interval on per-window mean differences covers the true
    mean difference >= 93% of the time (measured 93.4%); a percentile bootstrap over the same windows does not."""
    rng = np.random.default_rng(1)
    reps, n, length, phi = 2000, 10, 256, 0.95
    true = 0.05 * np.exp(0.5)  # E[0.05 * lognormal(0, 1)]
    cover_t = cover_boot = 0
    for _ in range(reps):
        eps = rng.standard_normal((n, length))
        g = np.empty_like(eps)
        g[:, 0] = rng.standard_normal(n)
        for j in range(1, length):
            g[:, j] = phi * g[:, j - 1] + np.sqrt(1 - phi**2) * eps[:, j]
        d = (0.05 * np.exp(g) + 0.1 * rng.standard_normal((n, length))).mean(1)
        iv = mean_t(d)
        cover_t += iv.ci[0] <= true <= iv.ci[1]
        boot = d[rng.integers(0, n, (400, n))].mean(1)
        lo, hi = np.quantile(boot, [0.025, 0.975])
        cover_boot += lo <= true <= hi
    assert cover_t / reps >= 0.93
    assert cover_boot / reps < 0.91


@pytest.mark.parametrize("set_sd", [0.05, 0.2])
def test_random_set_interval_covers_through_contrasts(set_sd):
    """End to end through Contrasts: a shared item effect, a true effect per random set (population mean = wn's),
    set-by-item noise. The wn_neg - random_neg interval (stratified item bootstrap + between-set variance less
    each set's own item noise, Satterthwaite t) covers 0 >= 93% of the time; the item-only interval does not
    when sets differ."""
    rng = np.random.default_rng(0)
    reps, k, n = 300, 5, 200
    strata = np.repeat([f"p{i}" for i in range(10)], n // 10)
    cover = cover_items = 0
    for r in range(reps):
        item = rng.normal(0, 1, n)
        def frame(v):
            return {"blimp": pd.DataFrame({"item_id": np.arange(n).astype(str), "paradigm": strata, "lp_good": v,
                                           "lp_bad": 0.0})}
        items = {"baseline": frame(item + rng.normal(0, 0.2, n)), "wn_neg": frame(item + rng.normal(0, 0.3, n))}
        for j in range(k):
            items[f"random_neg_s{j}"] = frame(item + rng.normal(0, set_sd) + rng.normal(0, 0.3, n))
        groups = {"baseline": ["baseline"], "wn_neg": ["wn_neg"], "random_neg": [f"random_neg_s{j}" for j in range(k)]}
        con = Contrasts(items, groups, n_boot=400, seed=r)
        iv = con.interval("blimp", "margin", "random_neg", "wn_neg")
        cover += iv.ci[0] <= 0 <= iv.ci[1]
        half = 1.96 * np.sqrt(iv.extra["var_items"])
        cover_items += abs(iv.estimate) <= half
    assert cover / reps >= 0.93
    assert cover_items / reps < 0.90  # items only: 85% at set_sd 0.05 (items rescaled), far less at 0.2


def test_holm_path_matches_holm_and_tracks_the_step_that_sets_each_value():
    from negdiff.decide import _holm_path
    from negdiff.result_stats import holm

    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001])
    adj, mult, src = _holm_path(p)
    assert np.allclose(adj, holm(p))
    # sorted: 0.001 (x5), 0.01 (x4) = 0.04, 0.03 (x3) = 0.09, 0.04 (x2) = 0.08 -> carried 0.09 from claim 2
    assert src[1] == 2 and adj[1] == pytest.approx(0.09) and mult[1] == 2


def test_borderline_inherited_through_holm_running_maximum():
    """A bootstrap claim with the smallest p sets, through Holm's running maximum, the adjusted p of an analytic
    claim; if the bootstrap step is within Monte-Carlo error of alpha, so is the analytic claim's verdict."""
    boot = from_draws(-1.0, np.random.default_rng(3).normal(-1.97, 1.0, 1000), 200, "items", "t", 0)
    exact = _iv(-0.1, 0.1 / stats.t.isf(0.03, 499))  # one-sided p = 0.03 > boot's, x1 < boot's x2
    recs = decide([Claim("a", "a", -1, "r", boot), Claim("b", "b", -1, "r", exact)])
    assert recs[0]["p_one_sided"] < 0.03 and recs[1]["p_adjusted"] == pytest.approx(recs[0]["p_adjusted"])
    assert abs(recs[0]["p_adjusted"] - 0.05) < 2 * 2 * boot.mcse
    assert [r["verdict"] for r in recs] == ["borderline", "borderline"]


def test_double_dissociation_opposite_needs_every_half_reversed_and_missing_half_is_not_run():
    strong, reversed_ = _iv(-1.0, 0.1), _iv(+1.0, 0.1)
    one = Claim("dd", "dd", +1, "both", halves=[Claim("a", "a", -1, "r", strong), Claim("b", "b", -1, "r", reversed_)])
    both = Claim("dd", "dd", +1, "both", halves=[Claim("a", "a", -1, "r", reversed_), Claim("b", "b", -1, "r", reversed_)])
    missing = Claim("dd", "dd", +1, "both", halves=[Claim("a", "a", -1, "r", strong), Claim("b", "b", -1, "r", None)])
    assert decide([one])[0]["verdict"] == "inconclusive"
    assert decide([both])[0]["verdict"] == "opposite"
    assert decide([missing])[0]["verdict"] == "not run"


def test_non_finite_scores_are_refused_not_decided():
    from negdiff.errors import NegdiffError

    with pytest.raises(NegdiffError, match="NaN or inf"):
        stratum_mean_draws(np.array([1.0, -np.inf, 2.0] * 5))
    with pytest.raises(NegdiffError, match="non-finite"):
        mean_t(np.array([1.0, np.nan] * 6))
    with pytest.raises(NegdiffError, match="non-finite"):
        t_interval(1.0, float("nan"), 10, 20, "items", "t")


# ------------------------------------------------------------------------------------------ claim wiring
def _items(effects: dict[str, dict[str, float]], rng, n_windows: int = 12) -> dict[str, dict[str, pd.DataFrame]]:
    """Synthetic item tables: ``effects[cond]`` shifts blimp/tse margins, NLL per window and accuracy on MC."""
    paradigms = np.repeat([f"p{i}" for i in range(10)], 30)
    base_margin = rng.normal(1.0, 2.0, paradigms.size)
    tse_margin = rng.normal(0.2, 0.5, 220)
    tasks = np.repeat([f"t{i}" for i in range(11)], 20)
    nll = rng.normal(3.0, 0.2, n_windows)
    mc = rng.random((8, 100)) < 0.5
    out = {}
    for cond, eff in effects.items():
        noise = rng.normal(0, 0.05, paradigms.size)
        m = base_margin + eff.get("blimp", 0) + noise
        t = tse_margin + eff.get("tse", 0) + rng.normal(0, 0.01, 220)
        frames = {
            "perplexity": pd.DataFrame({"item_id": [f"w{i}" for i in range(n_windows)],
                                        "nll": nll + eff.get("nll", 0) + rng.normal(0, 0.002, n_windows)}),
            "blimp": pd.DataFrame({"item_id": [f"b{i}" for i in range(m.size)], "paradigm": paradigms,
                                   "lp_good": m, "lp_bad": 0.0, "correct": m > 0}),
            "tse": pd.DataFrame({"item_id": [f"t{i}" for i in range(220)], "task": tasks, "lp_good": t, "lp_bad": 0.0,
                                 "lp_bad_2": np.nan, "correct": t > 0}),
        }
        for j, name in enumerate(("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "sciq", "boolq",
                                  "lambada_openai")):
            flip = rng.random(100) < eff.get("err", 0)
            correct = mc[j] & ~flip
            frames[name] = pd.DataFrame({"item_id": [f"{name}{i}" for i in range(100)], "correct": correct,
                                         "ll": [[0.0, -1.0] if c else [-1.0, 0.0] for c in correct], "label": 0})
        out[cond] = frames
    return out


def _verdicts(effects, gate_ok=True):
    rng = np.random.default_rng(5)
    items = _items(effects, rng)
    groups = {c: [c] for c in effects if not c.startswith("random_neg_s")}
    groups["random_neg"] = [c for c in effects if c.startswith("random_neg_s")]
    con = Contrasts(items, groups, n_boot=2000, seed=0)
    check = match_check(con, {"matched": gate_ok}, 0.10)
    return {r["id"]: r for r in decide(build_claims(con, items, groups, check))}, check


BASE = {"baseline": {}, **{f"random_neg_s{k}": {"blimp": -0.01 * k, "nll": 0.001} for k in range(5)},
        "wn_identity_pos": {}}


def test_claims_hold_when_the_paper_is_right():
    eff = {**BASE, "wn_neg": {"nll": 0.10, "blimp": -0.6, "tse": -0.2, "err": 0.02},
           "ppl_matched_neg": {"nll": 0.10, "err": 0.3}, "wn_abs_neg": {"blimp": -0.8, "tse": -0.3}}
    v, check = _verdicts(eff)
    assert "gate" not in check, check
    assert {k: r["verdict"] for k, r in v.items()} == {
        "ppl": "holds", "blimp_vs_random_neg": "holds", "tse_vs_random_neg": "holds",
        "blimp_vs_ppl_matched_neg": "holds", "tse_vs_ppl_matched_neg": "holds", "double_dissociation": "holds",
        "sign_vs_magnitude_blimp": "holds", "sign_vs_magnitude_tse": "holds"}
    assert v["blimp_vs_random_neg"]["also"]["acc"]["estimate"] < 0


def test_claims_reverse_when_the_effects_reverse():
    eff = {**BASE, "wn_neg": {"nll": -0.10, "blimp": +0.6, "tse": +0.2},
           "ppl_matched_neg": {"nll": -0.10, "blimp": -0.5, "err": 0.0}, "wn_abs_neg": {"blimp": +0.8, "tse": +0.3}}
    v, check = _verdicts(eff)
    assert v["ppl"]["verdict"] == "opposite"
    for k in ("blimp_vs_random_neg", "tse_vs_random_neg", "sign_vs_magnitude_blimp", "sign_vs_magnitude_tse"):
        assert v[k]["verdict"] == "opposite", k
    # wn_neg lowers perplexity here, so "matched to wn_neg's damage" is undefined: the control claims are gated
    assert "mismatch undefined" in check["gate"] and v["blimp_vs_ppl_matched_neg"]["verdict"] == "control not matched"


def test_null_effects_read_as_does_not_hold_and_unmatched_control_gates():
    eff = {**{k: {} for k in BASE}, "wn_neg": {"nll": 0.10}, "ppl_matched_neg": {"nll": 0.30},
           "wn_abs_neg": {}}
    v, check = _verdicts(eff)
    assert "outside" in check["gate"]  # the control does ~3x wn_neg's damage on the reported windows
    assert v["blimp_vs_ppl_matched_neg"]["verdict"] == "control not matched"
    assert v["double_dissociation"]["verdict"] == "control not matched"
    assert v["sign_vs_magnitude_blimp"]["verdict"] == "does not hold"
    # no simulated BLiMP effect: the interval lies inside the equivalence margin, so the claim is refuted, not open
    null = v["blimp_vs_random_neg"]
    assert null["verdict"] == "does not hold"
    assert -null["margin"] < null["ci"][0] < 0 < null["ci"][1] < null["margin"]
    _, failed = _verdicts({**eff, "ppl_matched_neg": {"nll": 0.10}}, gate_ok=False)
    assert "did not match" in failed["gate"]
    _, undefined = _verdicts({**eff, "wn_neg": {"nll": 0.0}, "ppl_matched_neg": {"nll": 0.0}})
    assert "mismatch undefined" in undefined["gate"]


def test_controls_on_a_subset_pair_every_condition_on_that_subset():
    """Controls scored on fewer items: their contrasts equal those of tables restricted by hand; the
    headline contrasts keep every item."""
    rng = np.random.default_rng(11)
    eff = {"baseline": {}, "wn_neg": {"blimp": -0.5}, "wn_identity_pos": {}, "wn_abs_neg": {"blimp": -0.8}}
    items = _items(eff, rng)
    keep = set(items["baseline"]["blimp"].groupby("paradigm").head(12)["item_id"])  # 12 of 30 per paradigm
    sub = {c: {**per} for c, per in items.items()}
    for c in ("wn_identity_pos", "wn_abs_neg"):
        sub[c]["blimp"] = per_b = items[c]["blimp"][items[c]["blimp"]["item_id"].isin(keep)].reset_index(drop=True)
        assert len(per_b) == 120
    groups = {c: [c] for c in eff}
    con = Contrasts(sub, groups, n_boot=2000, seed=0)
    by_hand = {c: {"blimp": per["blimp"][per["blimp"]["item_id"].isin(keep)].reset_index(drop=True)}
               for c, per in items.items()}
    ref = Contrasts(by_hand, groups, n_boot=2000, seed=0)
    got = con.interval("blimp", "margin", "wn_identity_pos", "wn_abs_neg")
    want = ref.interval("blimp", "margin", "wn_identity_pos", "wn_abs_neg")
    assert got.n == 120 and got.estimate == pytest.approx(want.estimate) and got.ci == pytest.approx(want.ci)
    head = con.interval("blimp", "margin", "baseline", "wn_neg")
    assert head.n == 300 and head.estimate == pytest.approx(-0.5, abs=0.05)
    assert con.value("wn_abs_neg", "blimp", "margin")["n"] == 120


def test_one_random_set_gives_no_interval_rather_than_an_item_only_one():
    rng = np.random.default_rng(0)
    n = 40

    def frame(v):
        return {"blimp": pd.DataFrame({"item_id": np.arange(n).astype(str), "paradigm": "p", "lp_good": v, "lp_bad": 0.0})}

    items = {"baseline": frame(rng.normal(0, 1, n)), "wn_neg": frame(rng.normal(0, 1, n)),
             "random_neg_s0": frame(rng.normal(0, 1, n))}
    groups = {"baseline": ["baseline"], "wn_neg": ["wn_neg"], "random_neg": ["random_neg_s0"]}
    one = Contrasts(items, groups, n_boot=1000, seed=0, sampled={"random_neg"}).interval("blimp", "margin", "random_neg", "wn_neg")
    assert one.ci is None and "fewer than 2 random sets" in one.extra["reason"]
    fixed = Contrasts(items, groups, n_boot=1000, seed=0).interval("blimp", "margin", "random_neg", "wn_neg")
    assert fixed.ci is not None and fixed.estimate == pytest.approx(one.estimate)  # same estimate; only the CI differs
