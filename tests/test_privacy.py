import re
import socket

import pandas as pd
import pytest
import tldextract

from pipeline.errors import InvalidInputError
from pipeline.privacy import (
    PrivacyAudit,
    PrivacyPolicy,
    anonymize_table,
    anonymize_texts,
    build_analyzer,
    detect_columns,
    pseudonymize,
)
from pipeline.privacy import analyzer as privacy_analyzer

SECRET = b"tenant-a-secret"
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def resident_id(first17: str, is_valid: bool = True) -> str:
    check = "10X98765432"[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]
    if not is_valid:
        check = "10X98765432"[("10X98765432".index(check) + 1) % 11]
    return first17 + check


@pytest.fixture(scope="module")
def analyzer():
    return build_analyzer()


def found(analyzer, text, language="en"):
    return {(r.entity_type, text[r.start : r.end]) for r in analyzer.analyze(text, language)}


def test_building_and_analysing_opens_no_socket(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    for target, name in [
        (socket.socket, "connect"),
        (socket.socket, "connect_ex"),
        (socket, "create_connection"),
        (socket, "getaddrinfo"),
    ]:
        monkeypatch.setattr(target, name, refuse)
    # The fault injection bites: tldextract's default extractor would go to the network.
    with pytest.raises(AssertionError, match="network access"):
        tldextract.TLDExtract(cache_dir=None)("someone@example.com")
    # Forget the suffix list our extractor may have loaded earlier, so it loads it again here.
    monkeypatch.setattr(privacy_analyzer._OFFLINE_TLD_EXTRACT, "_extractor", None)
    build_analyzer.cache_clear()

    analyzer = build_analyzer()
    text = "Write to jane.doe@example.co.uk or jane@mail.example.org"
    assert {e for e, _ in found(analyzer, text)} == {"EMAIL_ADDRESS"}
    texts, counts = anonymize_texts([text], SECRET, PrivacyPolicy.default(), analyzer=analyzer)
    assert counts["EMAIL_ADDRESS"] == 2 and "@" not in texts[0]


def test_cn_mobile_and_valid_resident_id_are_found_in_chinese_prose(analyzer):
    rid = resident_id("11010519491231002")
    assert rid == "11010519491231002X"
    text = f"请联系张伟，电话13812345678，身份证号{rid}，备用+86 139-1234-5678。"
    spans = found(analyzer, text, "zh")
    assert ("PHONE_NUMBER", "13812345678") in spans
    assert ("CN_RESIDENT_ID", rid) in spans
    assert any(e == "PHONE_NUMBER" and "139-1234-5678" in s for e, s in spans)


def test_resident_id_with_wrong_check_digit_is_not_reported(analyzer):
    bad = resident_id("44030619900101123", is_valid=False)
    good = resident_id("44030619900101123")
    assert "CN_RESIDENT_ID" not in {e for e, _ in found(analyzer, f"身份证号{bad}", "zh")}
    assert ("CN_RESIDENT_ID", good) in found(analyzer, f"身份证号{good}", "zh")


def test_us_phones_and_emails_are_found_in_english(analyzer):
    text = "Reach Bob at bob.smith@example.com, +1 415-555-0134 or (415) 555-0199."
    spans = found(analyzer, text)
    assert ("EMAIL_ADDRESS", "bob.smith@example.com") in spans
    phones = {s for e, s in spans if e == "PHONE_NUMBER"}
    assert any("415-555-0134" in s for s in phones)
    assert any("555-0199" in s for s in phones)


def test_us_phones_with_unassigned_area_codes_are_still_replaced(analyzer):
    texts = ["call +1 723-555-7961 today", "电话(345) 555-8896，谢谢", "or +17235557961"]
    out, counts = anonymize_texts(texts, SECRET, PrivacyPolicy.default(), analyzer=analyzer)
    assert counts["PHONE_NUMBER"] == 3
    for raw in ("723-555-7961", "555-8896", "7235557961"):
        assert not any(raw in text for text in out), out
    assert out[0].split()[1] == out[2].split()[1]


def test_pseudonyms_are_stable_per_secret_and_differ_across_secrets():
    values = pd.Series(["a@example.com", "b@example.com", "a@example.com", None, ""])
    first = pseudonymize(values, SECRET, "EMAIL_ADDRESS")
    again = pseudonymize(values, SECRET, "EMAIL_ADDRESS")
    other = pseudonymize(values, b"tenant-b-secret", "EMAIL_ADDRESS")
    assert first.tolist()[:3] == again.tolist()[:3]
    assert first[0] == first[2] != first[1]
    assert re.fullmatch(r"EMAIL_ADDRESS_[0-9a-f]{12,}", first[0])
    assert first[0] != other[0]
    assert first.isna().tolist() == [False, False, False, True, True]


def test_pseudonymize_refuses_an_empty_secret():
    with pytest.raises(InvalidInputError, match="secret"):
        pseudonymize(pd.Series(["a@example.com"]), b"", "EMAIL_ADDRESS")


def test_one_phone_written_two_ways_gets_one_pseudonym():
    values = pd.Series(["+86 138 1234 5678", "13812345678", "(415) 555-0134", "+1 415-555-0134"])
    out = pseudonymize(values, SECRET, "PHONE_NUMBER")
    assert out[0] == out[1] and out[2] == out[3] and out[0] != out[2]


@pytest.fixture
def profiles():
    return pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "name": ["Zhang Wei", "Bob Smith", "Li Na", "Ann Lee"],
            "email": ["zw@example.cn", "bob.smith@example.com", "lina@example.org", None],
            "phone": ["+86 138 1234 5678", "+1 415-555-0134", "13912345678", "(650) 555-0123"],
            "city": ["上海", "Austin", "Chengdu", "Smallville"],
            "country": ["CN", "US", "CN", "US"],
            "timezone": ["Asia/Shanghai", "America/Chicago", "Asia/Shanghai", "America/New_York"],
            "age": [34, 61, 19, None],
            "signup_at": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01"]),
            "notes": [
                "请联系张伟，电话13812345678，邮箱zw@example.cn，谢谢",
                "Bob Smith asked us to call +1 415-555-0134 or mail bob.smith@example.com",
                "李娜的手机是 139 1234 5678，邮件 lina@example.org",
                "Ann prefers (650) 555-0123 in the evening",
            ],
        }
    )


def test_anonymized_table_holds_no_raw_email_or_phone_and_input_is_untouched(analyzer, profiles):
    before = profiles.copy(deep=True)
    out, audit = anonymize_table(profiles, SECRET, analyzer=analyzer)
    pd.testing.assert_frame_equal(profiles, before)
    raw = [v for c in ("email", "phone") for v in profiles[c].dropna()]
    raw += ["13812345678", "139 1234 5678", "415-555-0134", "555-0123", "@example"]
    cells = [str(v) for v in out.to_numpy().ravel()]
    for value in raw:
        assert not any(value in cell for cell in cells), value
    assert "name" not in out.columns
    assert out["user_id"].tolist() == profiles["user_id"].tolist()
    assert out["timezone"].tolist() == profiles["timezone"].tolist()
    assert out["age"].tolist()[:3] == ["30-39", "60-69", "10-19"]
    assert out["city"].tolist() == ["China", "United States", "China", "<LOCATION>"]
    assert "Bob Smith" not in out["notes"][1]
    assert out["email"][0] in out["notes"][0] and out["phone"][0] in out["notes"][0]
    assert isinstance(audit, PrivacyAudit) and audit.total() > 0


def test_audit_counts_entities_but_holds_no_values(analyzer, profiles):
    _, audit = anonymize_table(profiles, SECRET, analyzer=analyzer)
    report = audit.to_dict()
    assert report["counts"]["email"] == {"EMAIL_ADDRESS": 3}
    assert report["counts"]["phone"] == {"PHONE_NUMBER": 4}
    assert report["counts"]["notes"]["PHONE_NUMBER"] == 4
    assert report["total"] == audit.total()
    text = repr(report)
    for value in profiles[["name", "email", "phone", "notes"]].to_numpy().ravel():
        if isinstance(value, str):
            assert value not in text


def test_detect_columns_finds_email_phone_name_and_notes_columns(analyzer, profiles):
    renamed = profiles.rename(columns={"email": "contact", "phone": "reach_at", "notes": "misc"})
    kinds = detect_columns(renamed, analyzer)
    assert kinds["name"] == "PERSON"
    assert kinds["contact"] == "EMAIL_ADDRESS"
    assert kinds["reach_at"] == "PHONE_NUMBER"
    assert kinds["misc"] == "TEXT"
    assert kinds["user_id"] is None and kinds["timezone"] is None and kinds["signup_at"] is None
    assert detect_columns(profiles, analyzer)["notes"] == "TEXT"


def test_anonymize_texts_analyses_repeated_texts_once_and_keeps_empty_ones(analyzer):
    texts = ["mail a@example.com", "", "mail a@example.com", "no pii here"]
    out, counts = anonymize_texts(texts, SECRET, PrivacyPolicy.default(), analyzer=analyzer)
    assert out[0] == out[2] and "@" not in out[0]
    assert out[1] == "" and out[3] == "no pii here"
    assert counts["EMAIL_ADDRESS"] == 2


def test_policy_operators_drop_and_mask_replace_spans(analyzer):
    policy = PrivacyPolicy({"EMAIL_ADDRESS": "drop", "PHONE_NUMBER": "mask"})
    out, _ = anonymize_texts(["a@example.com / 13812345678"], SECRET, policy, analyzer=analyzer)
    assert out == ["<EMAIL_ADDRESS> / ****"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            "operators:\n  EMAIL_ADDRESS: pseudonymize\n  PHONE_NUMBER: hash\n",
            "line 3: unknown operator",
        ),
        ("operators:\n  SHOE_SIZE: drop\n", "line 2: unknown entity type"),
        ("- EMAIL_ADDRESS\n- drop\n", "line 1: the policy is not a mapping"),
        ("operators: [drop]\n", "line 1: operators is not a mapping"),
        ("operators:\n  EMAIL_ADDRESS: drop\n   bad: [\n", "line 3"),
    ],
)
def test_bad_policy_file_names_the_line_and_problem(tmp_path, content, problem):
    path = tmp_path / "policy.yaml"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=re.escape(problem)):
        PrivacyPolicy.from_file(path)


def test_policy_file_in_json_or_yaml_is_read(tmp_path):
    json_path = tmp_path / "policy.json"
    json_path.write_text('{"operators": {"EMAIL_ADDRESS": "mask"}, "default_operator": "keep"}')
    policy = PrivacyPolicy.from_file(json_path)
    assert policy.operator_for("EMAIL_ADDRESS") == "mask"
    assert policy.operator_for("URL") == "keep"
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{\n  "operators": {"EMAIL_ADDRESS": "shred"}\n}')
    with pytest.raises(InvalidInputError, match="line 2: unknown operator 'shred'"):
        PrivacyPolicy.from_file(bad_json)


def test_vectorised_phone_pseudonyms_equal_one_by_one_pseudonyms():
    from pipeline.privacy.operators import pseudonym

    values = pd.Series(
        ["+86 138 1234 5678", "１３８１２３４５６７８", "8613812345678", "(415) 555-0134",
         "+1 415-555-0134", "4155550134", "+44 20 7946 0958", "12345", "n/a", None, " "],
        dtype="str",
    )
    out = pseudonymize(values, SECRET, "PHONE_NUMBER")
    assert out[0] == out[1] == out[2] and out[3] == out[4] == out[5]
    for value, got in zip(values[:8], out[:8], strict=True):
        assert got == pseudonym(value, SECRET, "PHONE_NUMBER")
    assert out[8:].isna().all()


def test_batched_analysis_finds_what_one_by_one_analysis_finds(analyzer):
    from pipeline.privacy import find_entities, find_entities_batch

    texts = [
        "Reach Bob at bob.smith@example.com, +1 415-555-0134 or (415) 555-0199.",
        f"请联系张伟，电话13812345678，身份证号{resident_id('11010519491231002')}。",
        "nothing personal here",
        "邮箱zw@example.cn，备用+86 139-1234-5678",
    ]
    assert find_entities_batch(texts, analyzer) == [find_entities(t, analyzer) for t in texts]


def test_a_pool_of_processes_anonymises_like_one_process(analyzer):
    from pipeline.privacy import TextAnalyzerPool

    texts = [f"mail user{i}@example.com or call 1381234{i:04d}" for i in range(30)] + ["", "hi"]
    policy = PrivacyPolicy.default()
    here, counts_here = anonymize_texts(texts, SECRET, policy, analyzer=analyzer)
    with TextAnalyzerPool(2, batch_size=7) as pool:
        there, counts_there = anonymize_texts(texts, SECRET, policy, pool=pool)
        assert len(pool.batch_seconds) == 5
    assert there == here and counts_there == counts_here == {"EMAIL_ADDRESS": 30, "PHONE_NUMBER": 30}


def test_a_named_spacy_model_that_is_not_installed_is_refused():
    with pytest.raises(InvalidInputError, match="spacy_model"):
        build_analyzer("no_such_model_xyz")


def test_tenant_policy_round_trips_through_redis_and_defaults_when_unset(
    redis_client, new_tenant_id
):
    from pipeline import tenants
    from pipeline.errors import UnknownTenantError
    from pipeline.privacy import load_policy, save_policy, tenant_policy

    tenant = new_tenant_id("policy")
    tenants.create_tenant(redis_client, tenant)
    assert load_policy(redis_client, tenant) is None
    assert tenant_policy(redis_client, tenant) == PrivacyPolicy.default()
    policy = PrivacyPolicy({"PERSON": "pseudonymize"}, default_operator="mask")
    save_policy(redis_client, tenant, policy)
    assert load_policy(redis_client, tenant) == policy
    with pytest.raises(UnknownTenantError):
        save_policy(redis_client, new_tenant_id("nobody"), policy)
