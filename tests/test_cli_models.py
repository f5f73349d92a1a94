"""`pushpilot model ...` through the real entry point: train, list, show, promote, score, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.uplift import LEARNERS

PUSHPILOT = Path(sys.executable).with_name("pushpilot")


def _table(n_rows: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["free", "plus", "pro"], size=n_rows)
    visits = rng.poisson(4, n_rows)
    logit = -2.5 + 0.5 * visits + np.where(plan == "pro", 1.5, 0.0)
    y = rng.random(n_rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({"customer": [f"c{i}" for i in range(n_rows)], "plan": plan,
                         "visits": visits, "noise": rng.normal(size=n_rows),
                         "bought": np.where(y, "yes", "no")})


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("cli-data")
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(data_dir)}
    env.pop("PUSHPILOT_REDIS_URL", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PUSHPILOT), *args], env=env, capture_output=True, text=True,
                              timeout=300)

    yield run
    run("down")


@pytest.fixture(scope="module")
def trained(cli, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    table = folder / "customers.csv"
    _table().to_csv(table, sep=";", index=False)
    assert cli("tenant", "create", "acme").returncode == 0
    first = cli("model", "train", "--tenant", "acme", "--table", str(table), "--label", "bought")
    worse = cli("model", "train", "--tenant", "acme", "--table", str(table), "--label", "bought",
                "--drop", "visits", "--drop", "plan")
    return table, first, worse


def _last_json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_train_prints_metrics_and_a_worse_challenger_is_registered_but_not_promoted(trained):
    _, first, worse = trained

    first_line, worse_line = _last_json(first), _last_json(worse)

    assert first_line["tenant"] == "acme" and first_line["kind"] == "table"
    assert first_line["version"] == 1 and first_line["champion"] is True
    assert set(first_line["metrics"]) >= {"roc_auc", "pr_auc", "lift_at_10pct", "brier"}
    assert first_line["metrics"]["roc_auc"] > 0.65
    assert first_line["identifier_columns"] == ["customer"]
    # The simple baselines on the same hold-out, beside the learner CV chose.
    assert set(first_line["baselines"]) == {"logistic", "prior"}
    assert set(first_line["cv"]) == {"TableModel", "LogisticTableModel"}
    assert first_line["learner"] == max(first_line["cv"], key=first_line["cv"].__getitem__)
    assert first_line["metrics"]["roc_auc"] >= first_line["baselines"]["logistic"]
    assert "baseline logistic, same hold-out" in first.stderr
    assert "calibration, CV Brier" in first.stderr and "cv_brier_isotonic" in first_line["metrics"]
    assert f"(kept: {first_line['calibration']})" in first.stderr
    assert first_line["calibration"] in {"none", "platt", "isotonic"}
    assert worse_line["version"] == 2 and worse_line["champion"] is False
    assert worse_line["metrics"]["roc_auc"] < first_line["metrics"]["roc_auc"]


@pytest.mark.slow
def test_uplift_train_prints_each_arm_the_baselines_and_scores_arms(cli, trained, tmp_path):
    rng = np.random.default_rng(19)  # not the table's seed, or the arms would follow the plans
    n = 6000
    log = _table(n, seed=9).drop(columns="bought")
    log["segment"] = rng.choice(["No E-Mail", "Mens E-Mail", "Womens E-Mail"], n)
    effect = np.select([(log["segment"] == "Mens E-Mail") & (log["plan"] == "pro"),
                        (log["segment"] == "Womens E-Mail") & (log["visits"] >= 5)], [0.3, 0.3], 0.0)
    log["visit"] = (rng.random(n) < 0.1 + effect).astype(int)
    table = tmp_path / "campaign.csv"
    log.to_csv(table, index=False)

    assert cli("tenant", "create", "mailer").returncode == 0
    trained_uplift = cli("model", "train", "--tenant", "mailer", "--table", str(table), "--label",
                         "visit", "--treatment", "segment", "--control", "No E-Mail",
                         "--cv-folds", "3")
    line = _last_json(trained_uplift)
    out = tmp_path / "uplift.csv"
    if not line["champion"]:  # below a baseline on this hold-out: promote it by hand to score
        _last_json(cli("model", "promote", "--tenant", "mailer", "--kind", "uplift",
                       "--version", str(line["version"])))
    scored = _last_json(cli("model", "score", "--tenant", "mailer", "--table", str(table),
                            "--kind", "uplift", "--out", str(out)))

    assert line["kind"] == "uplift" and set(line["baselines"]) == {"logistic_ct", "hgb_t_learner", "random"}
    assert {"qini_auc.Mens E-Mail", "uplift_at_30pct.Womens E-Mail"} <= set(line["metrics"])
    assert line["metrics"]["uplift_at_30pct"] > 2 * line["metrics"]["ate"]
    assert "Mens E-Mail: " in line["learner"] and "Womens E-Mail: " in line["learner"]
    for name in ("ours", "cv ct_logistic[Mens E-Mail]", "baseline logistic_ct, same hold-out",
                 "baseline hgb_t_learner, same hold-out", "baseline random, same hold-out"):
        assert name in trained_uplift.stderr, name
    scores = pd.read_csv(out)
    assert scored["kind"] == "uplift" and len(scores) == n
    assert {"uplift", "best_arm", "uplift_Mens E-Mail", "uplift_Womens E-Mail"} <= set(scores.columns)


def test_eval_send_time_prints_ours_beside_the_baselines(cli):
    result = cli("model", "eval-send-time", "--users", "300", "--seed", "3")
    line = _last_json(result)

    assert line["eval"] == "send_time" and line["seeds"] == [3] and line["users"] == 300
    assert line["hit_rate"]["ours (best_send_hour)"] > line["hit_rate"]["tenant's most common hour"]
    assert "tenant's most common hour" in result.stderr and "within 1h" in result.stderr
    assert cli("model", "eval-send-time", "--users", "10").returncode == 2


def test_eval_uplift_scores_ours_each_candidate_and_the_baselines_on_the_truth(cli):
    result = cli("model", "eval-uplift", "--users", "2500", "--seed", "3", "--treated-share", "0.5",
                 "--cv-folds", "3")
    line = _last_json(result)

    gains = line["true_uplift_top"]
    assert line["eval"] == "uplift" and line["seeds"] == [3] and line["treated_shares"] == [0.5]
    assert {"baseline logistic_ct", "baseline hgb_t_learner", "baseline propensity",
            "baseline random", "ours (UpliftModel, CV Qini)", *LEARNERS} == set(gains)
    assert gains["baseline logistic_ct"] == gains["ct_logistic"]
    assert line["chosen"][0] in LEARNERS
    # Ours is the candidate it chose, refitted the same way, and it finds the persuadable.
    assert gains["ours (UpliftModel, CV Qini)"] == gains[line["chosen"][0]]
    assert gains["ours (UpliftModel, CV Qini)"] > 1.5 * gains["baseline random"]
    assert "baseline propensity" in result.stderr and "ours chose" in result.stderr

    refused = cli("model", "eval-uplift", "--users", "2500", "--treated-share", "1.5")
    assert refused.returncode == 2 and "treated_share" in refused.stderr


@pytest.mark.slow
def test_list_show_promote_and_score(cli, trained, tmp_path):
    table, _, _ = trained

    listed = [json.loads(line) for line in cli("model", "list", "--tenant", "acme").stdout.splitlines()]
    shown = _last_json(cli("model", "show", "--tenant", "acme", "--version", "2"))
    promoted = _last_json(cli("model", "promote", "--tenant", "acme", "--version", "2"))
    out = tmp_path / "scores.csv"
    scored = _last_json(cli("model", "score", "--tenant", "acme", "--table", str(table),
                            "--keep", "customer", "--out", str(out)))

    assert [(v["version"], v["champion"]) for v in listed] == [(1, True), (2, False)]
    assert shown["tags"]["promotion"].startswith("kept champion v1")
    assert shown["params"]["dropped"] == "visits,plan"
    assert promoted == {"tenant": "acme", "kind": "table", "champion": 2, "previous_champion": 1}
    scores = pd.read_csv(out)
    assert scored["version"] == 2 and len(scores) == len(_table())
    assert list(scores.columns) == ["row", "customer", "score"]
    assert scores["score"].between(0, 1).all()


@pytest.mark.slow
def test_bad_input_exits_2_names_the_problem_and_changes_nothing(cli, trained, tmp_path):
    table, _, _ = trained
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("just one column\nand no separator\n")

    cases = {
        "no tenant 'ghost'": ("model", "train", "--tenant", "ghost", "--table", str(table),
                              "--label", "bought"),
        "label: no column 'y'": ("model", "train", "--tenant", "acme", "--table", str(table),
                                 "--label", "y"),
        "garbage.csv has one column": ("model", "train", "--tenant", "acme", "--table",
                                       str(garbage), "--label", "bought"),
        "has no model version 9": ("model", "promote", "--tenant", "acme", "--version", "9"),
    }
    for message, args in cases.items():
        result = cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "error: " in result.stderr and message in result.stderr, result.stderr

    listed = [json.loads(line) for line in cli("model", "list", "--tenant", "acme").stdout.splitlines()]
    assert [(v["version"], v["champion"]) for v in listed] == [(1, False), (2, True)]
    assert not (tmp_path / "scores.csv").exists()
