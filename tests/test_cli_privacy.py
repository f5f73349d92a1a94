"""`pushpilot privacy ...` through the real entry point, in its own process, on the session's Valkey."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import redis

from pipeline import keys, tenants
from pipeline.privacy import pseudonymize, recent_audits
from pipeline.redis_server import EmbeddedRedis

PUSHPILOT = str(Path(sys.executable).with_name("pushpilot"))
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _resident_id(first17: str, is_valid: bool = True) -> str:
    check = "10X98765432"[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]
    if not is_valid:
        check = "10X98765432"[("10X98765432".index(check) + 1) % 11]
    return first17 + check


@pytest.fixture
def run(tmp_path: Path, redis_server: EmbeddedRedis) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(tmp_path / "state"),
           "PUSHPILOT_REDIS_URL": redis_server.url}

    def pushpilot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PUSHPILOT, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    return pushpilot


@pytest.fixture
def profiles_csv(tmp_path: Path) -> Path:
    path = tmp_path / "profiles.csv"
    pd.DataFrame({
        "user_id": ["u1", "u2", "u3"],
        "name": ["Zhang Wei", "Bob Smith", "Ann Lee"],
        "email": ["zw@example.cn", "bob.smith@example.com", "ann.lee@example.org"],
        "phone": ["+86 138 1234 5678", "+1 415-555-0134", "(650) 555-0123"],
        "plan": ["gold", "free", "free"],
        "notes": ["请联系张伟，电话13812345678，邮箱zw@example.cn，谢谢",
                  "Bob asked us to call +1 415-555-0134 or mail bob.smith@example.com", ""],
    }).to_csv(path, index=False)
    return path


def test_scan_reports_each_columns_entity_type_and_counts_but_no_values(
    run, profiles_csv: Path, redis_client: redis.Redis, new_tenant_id
) -> None:
    tenant = new_tenant_id("scan")
    tenants.create_tenant(redis_client, tenant)
    proc = run("privacy", "scan", "--tenant", tenant, "--table", str(profiles_csv))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    columns = report["columns"]
    assert report["rows"] == 3
    assert columns["email"] == {"entity_type": "EMAIL_ADDRESS", "values": 3}
    assert columns["phone"]["entity_type"] == "PHONE_NUMBER"
    assert columns["name"]["entity_type"] == "PERSON"
    assert columns["plan"]["entity_type"] is None
    assert columns["notes"]["entity_type"] == "TEXT"
    # "Bob" in the English note comes from NER (on by default); the Chinese note's 张伟 from
    # nothing but the row's own name column, which scan does not apply.
    assert columns["notes"]["entities"] == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 2, "PERSON": 1}
    assert "example" not in proc.stdout and "555" not in proc.stdout


def test_anonymize_uses_the_tenants_secret_and_stored_policy_and_records_the_audit(
    run, tmp_path: Path, profiles_csv: Path, redis_client: redis.Redis, new_tenant_id
) -> None:
    tenant = new_tenant_id("anon")
    tenants.create_tenant(redis_client, tenant)
    policy = tmp_path / "policy.yaml"
    policy.write_text("operators:\n  PERSON: pseudonymize\n  EMAIL_ADDRESS: pseudonymize\n"
                      "  PHONE_NUMBER: mask\n")
    stored = run("privacy", "policy", "set", "--tenant", tenant, "--file", str(policy))
    assert stored.returncode == 0, stored.stderr
    assert json.loads(redis_client.get(keys.privacy_policy(tenant)))["operators"]["PERSON"] == "pseudonymize"

    out = tmp_path / "safe.csv"
    proc = run("privacy", "anonymize", "--tenant", tenant, "--table", str(profiles_csv), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    audit = json.loads(proc.stdout)["audit"]
    assert audit["counts"]["email"] == {"EMAIL_ADDRESS": 3}
    assert audit["counts"]["notes"] == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 2, "PERSON": 1}
    safe = pd.read_csv(out, dtype=str, keep_default_na=False)
    raw = pd.read_csv(profiles_csv, dtype=str, keep_default_na=False)
    secret = tenants.tenant_secret(redis_client, tenant)
    assert safe["email"].tolist() == pseudonymize(raw["email"], secret, "EMAIL_ADDRESS").tolist()
    assert safe["name"].tolist() == pseudonymize(raw["name"], secret, "PERSON").tolist()
    assert set(safe["phone"]) == {"****"}
    text = out.read_text() + proc.stdout + proc.stderr
    for value in [*raw["email"], *raw["name"], "13812345678", "415-555-0134", "555-0123"]:
        assert value not in text
    entry = recent_audits(redis_client, tenant, 1)[0]
    assert entry["source"] == "cli privacy anonymize" and entry["counts"] == audit["counts"]


def test_analyze_writes_presidio_entity_spans_per_line(run, tmp_path: Path) -> None:
    good_id, bad_id = _resident_id("11010519491231002"), _resident_id("44030619900101123", False)
    lines = [
        {"id": "zh-1", "text": f"请联系张伟，电话13812345678，身份证号{good_id}。", "language": "zh"},
        {"id": 2, "text": f"身份证号{bad_id}", "language": "zh"},
        {"id": "en-1", "text": "Mail bob@example.com from 192.168.1.20, card 4111 1111 1111 1111",
         "language": "en"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n")
    out = tmp_path / "out.jsonl"
    proc = run("privacy", "analyze", "--input", str(source), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in results] == ["zh-1", 2, "en-1"]

    def spans(i: int) -> set[tuple[str, str]]:
        return {(e["type"], lines[i]["text"][e["start"] : e["end"]]) for e in results[i]["entities"]}

    assert {("PHONE_NUMBER", "13812345678"), ("CN_RESIDENT_ID", good_id)} <= spans(0)
    assert "CN_RESIDENT_ID" not in {t for t, _ in spans(1)}
    assert {("EMAIL_ADDRESS", "bob@example.com"), ("IP_ADDRESS", "192.168.1.20"),
            ("CREDIT_CARD", "4111 1111 1111 1111")} <= spans(2)
    assert all(0 < e["score"] <= 1 for r in results for e in r["entities"])


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("unknown tenant", "no tenant 'nobody-here'"),
        ("bad policy", "line 3: unknown operator 'shred' for PHONE_NUMBER"),
        ("bad jsonl", "--input: line 2: text is missing or not a string"),
    ],
)
def test_bad_input_is_refused_with_exit_2_and_writes_nothing(
    run, tmp_path: Path, profiles_csv: Path, redis_client: redis.Redis, new_tenant_id, case: str,
    problem: str,
) -> None:
    tenant = new_tenant_id("bad")
    tenants.create_tenant(redis_client, tenant)
    out = tmp_path / "out.csv"
    if case == "unknown tenant":
        proc = run("privacy", "anonymize", "--tenant", "nobody-here", "--table", str(profiles_csv),
                   "--out", str(out))
    elif case == "bad policy":
        policy = tmp_path / "policy.yaml"
        policy.write_text("operators:\n  EMAIL_ADDRESS: drop\n  PHONE_NUMBER: shred\n")
        proc = run("privacy", "anonymize", "--tenant", tenant, "--table", str(profiles_csv),
                   "--out", str(out), "--policy", str(policy))
    else:
        source = tmp_path / "in.jsonl"
        source.write_text('{"id": 1, "text": "ok", "language": "en"}\n{"id": 2, "language": "en"}\n')
        out = tmp_path / "out.jsonl"
        proc = run("privacy", "analyze", "--input", str(source), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert problem in proc.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".*.partial"))
    assert redis_client.xlen(keys.privacy_audit(tenant)) == 0


def test_bench_privacy_prints_a_table_and_one_json_line(run) -> None:
    proc = run("bench", "privacy", "--rows", "2000", "--batch-rows", "1000", "--texts", "100",
               "--workers", "1", "--spacy-model", "")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["structured"]["rows"] == 2000 and report["structured"]["batches"] == 2
    assert report["structured"]["columns_out"] == ["user_id", "email", "phone"]
    assert [(t["mode"], t["workers"]) for t in report["text"]] == [("NER off", 1)]
    assert report["text"][0]["spans"]["EMAIL_ADDRESS"] > 0
    assert {"python", "presidio-analyzer", "spacy"} <= set(report["versions"])
    assert len(report["load_average_end"]) == 3
