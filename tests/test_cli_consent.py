"""`pushpilot user consent|preferences` and training that leaves out refusals, via the entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.generator import generate_tenant, write_tenant

PUSHPILOT = Path(sys.executable).with_name("pushpilot")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(tmp_path_factory.mktemp("cli-consent"))}
    env.pop("PUSHPILOT_REDIS_URL", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PUSHPILOT), *args], env=env, capture_output=True, text=True,
                              timeout=300)

    for tenant in ("acme", "other"):
        assert run("tenant", "create", tenant).returncode == 0
    yield run
    run("down")


def _json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_consent_is_recorded_shown_and_bad_input_changes_nothing(cli):
    after = _json(cli("user", "consent", "--tenant", "acme", "--user", "u1", "--set", "marketing=revoked",
                      "--set", "profiling=granted", "--policy-version", "v3", "--source", "support call"))
    assert after["purposes"]["marketing"]["allowed"] is False
    assert after["purposes"]["marketing"]["source"] == "support call"
    assert after["purposes"]["transactional"] == {**after["purposes"]["transactional"], "allowed": True,
                                                  "kind": "required", "source": "default"}

    cases = {
        "expected PURPOSE=STATUS": ("--set", "marketing"),
        "unknown purpose 'newsletter'": ("--set", "newsletter=denied"),
        "transactional: is required": ("--set", "transactional=revoked"),
        "unknown status 'later'": ("--set", "marketing=later"),
        "given twice": ("--set", "marketing=granted", "--set", "marketing=denied"),
    }
    for message, args in cases.items():
        result = cli("user", "consent", "--tenant", "acme", "--user", "u1", "--policy-version", "v4", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    ghost = cli("user", "preferences", "--tenant", "ghost", "--user", "u1")
    assert ghost.returncode == 2 and "no tenant 'ghost'" in ghost.stderr

    shown = _json(cli("user", "preferences", "--tenant", "acme", "--user", "u1"))
    assert [(c["purpose"], c["status"]) for c in shown["history"]] == [
        ("marketing", "revoked"), ("profiling", "granted")]
    assert _json(cli("user", "preferences", "--tenant", "other", "--user", "u1"))["history"] == []


def test_users_without_profiling_consent_are_left_out_of_training(cli, tmp_path):
    data = generate_tenant("acme", users=400, days=21, seed=5)
    active = sorted(data.events.loc[data.events["event_time"] <= data.cutoff, "user_id"].astype(str).unique())
    # A file's PII-shaped id: its consent is recorded under the pseudonym the API stores.
    data.events["user_id"] = data.events["user_id"].astype(str).replace(active[3], "jo.doe@example.com")
    write_tenant(data, tmp_path)
    (tmp_path / "policy.yaml").write_text("operators: {}\nuser_ids: pseudonymize\n")
    assert cli("privacy", "policy", "set", "--tenant", "acme", "--file", str(tmp_path / "policy.yaml")).returncode == 0
    refused = [*active[:3], "jo.doe@example.com"]
    for user in refused:
        _json(cli("user", "consent", "--tenant", "acme", "--user", user, "--set", "profiling=denied",
                  "--policy-version", "v3"))
    train = ("model", "train", "--events", str(tmp_path / "events.csv"), "--cutoff",
             data.cutoff.isoformat(), "--horizon", str(data.horizon_days))

    mine = cli(*train[:2], "--tenant", "acme", *train[2:])
    theirs = cli(*train[:2], "--tenant", "other", *train[2:])

    assert "left out 4 users who took back profiling consent or were erased" in mine.stderr
    assert "left out" not in theirs.stderr
    ours, others = _json(mine), _json(theirs)
    assert ours["n_train"] + ours["n_holdout"] == len(active) - 4
    assert others["n_train"] + others["n_holdout"] == len(active)


def test_export_and_erase_a_user(cli):
    for tenant in ("acme", "other"):
        _json(cli("user", "consent", "--tenant", tenant, "--user", "leaver", "--set", "marketing=denied",
                  "--policy-version", "v3"))
    held = _json(cli("user", "export", "--tenant", "acme", "--user", "leaver"))
    assert held["user_id"] == "leaver" and held["consent"]["purposes"]["marketing"]["allowed"] is False

    unconfirmed = cli("user", "erase", "--tenant", "acme", "--user", "leaver")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert _json(cli("user", "export", "--tenant", "acme", "--user", "leaver"))["consent"] == held["consent"]

    report = _json(cli("user", "erase", "--tenant", "acme", "--user", "leaver", "--yes"))
    assert report["erased"] is True and any("backups" in line for line in report["remains"])
    gone = cli("user", "export", "--tenant", "acme", "--user", "leaver")
    assert gone.returncode == 2 and "no data held about user 'leaver'" in gone.stderr
    assert _json(cli("user", "export", "--tenant", "other", "--user", "leaver"))["user_id"] == "leaver"
    report = _json(cli("compliance", "report", "--tenant", "acme"))
    assert report["data_subject_requests"]["users_erased"] == 1
    assert report["data_subject_requests"]["exports"] == 2 and "leaver" not in json.dumps(report)
    unknown = cli("compliance", "report", "--tenant", "ghost")
    assert unknown.returncode == 2 and "no tenant 'ghost'" in unknown.stderr


def test_retention_is_shown_set_and_swept_and_bad_input_changes_nothing(cli):
    unset = {"tenant_id": "acme", "events_days": None, "receipts_days": None, "inbox_days": None}
    assert _json(cli("compliance", "retention", "--tenant", "acme")) == unset
    policy = _json(cli("compliance", "retention", "--tenant", "acme", "--events-days", "30",
                       "--inbox-days", "7"))
    assert policy == {**unset, "events_days": 30, "inbox_days": 7}
    too_long = cli("compliance", "retention", "--tenant", "acme", "--receipts-days", "4000")
    assert too_long.returncode == 2 and "receipts_days" in too_long.stderr
    assert _json(cli("compliance", "retention", "--tenant", "acme")) == policy

    swept = cli("compliance", "sweep")
    assert swept.returncode == 0, swept.stderr
    reports = [json.loads(line) for line in swept.stdout.splitlines()]
    assert [r["tenant_id"] for r in reports] == ["acme"]  # only tenants with a policy
    assert "sweeping acme: event histories" in swept.stderr
    assert set(reports[0]["removed"]) == {"events_in_stream", "history_events", "histories_emptied",
                                          "inbox_entries"}
    held = _json(cli("compliance", "report", "--tenant", "acme"))["retention"]
    assert held["policy_days"] == {"events_days": 30, "receipts_days": None, "inbox_days": 7}
    assert held["last_sweep"]["removed"] == reports[0]["removed"]
    unknown = cli("compliance", "sweep", "--tenant", "ghost")
    assert unknown.returncode == 2 and "no tenant 'ghost'" in unknown.stderr
    cleared = _json(cli("compliance", "retention", "--tenant", "acme", "--events-days", "0",
                        "--inbox-days", "0"))
    assert cleared == unset
    nothing = cli("compliance", "sweep")
    assert nothing.returncode == 2 and "no tenant has a retention policy" in nothing.stderr


def test_topics_are_created_listed_and_refused_and_bad_input_changes_nothing(cli):
    assert _json(cli("topic", "create", "--tenant", "acme", "--name", "orders", "--required")) == {
        "name": "orders", "kind": "required", "description": ""}
    _json(cli("topic", "create", "--tenant", "acme", "--name", "sales", "--description", "offers"))
    bad = cli("topic", "create", "--tenant", "acme", "--name", "Sales!")
    assert bad.returncode == 2 and "a topic is" in bad.stderr
    assert [t["name"] for t in _json(cli("topic", "list", "--tenant", "acme"))["topics"]] == ["orders", "sales"]
    assert _json(cli("topic", "list", "--tenant", "other"))["topics"] == []

    after = _json(cli("user", "consent", "--tenant", "acme", "--user", "u7", "--set", "topic:sales=denied",
                      "--set", "channel:webhook=denied", "--policy-version", "v3"))
    assert after["topics"]["sales"]["allowed"] is False and after["channels"]["webhook"]["allowed"] is False
    required = cli("user", "consent", "--tenant", "acme", "--user", "u7", "--set", "topic:orders=denied",
                   "--policy-version", "v3")
    assert required.returncode == 2 and "is required" in required.stderr
    elsewhere = cli("user", "consent", "--tenant", "other", "--user", "u7", "--set", "topic:sales=denied",
                    "--policy-version", "v3")
    assert elsewhere.returncode == 2 and "unknown topic 'sales'" in elsewhere.stderr
    assert len(_json(cli("user", "preferences", "--tenant", "acme", "--user", "u7"))["history"]) == 2
