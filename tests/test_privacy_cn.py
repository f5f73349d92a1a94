"""Personal data as written in mainland China, found by the real analyzer inside Chinese prose."""

from __future__ import annotations

import pytest

from pipeline.privacy.analyzer import build_analyzer
from pipeline.privacy.cn import (
    cn_bank_card_is_valid,
    cn_resident_id_is_valid,
    cn_uscc_is_valid,
    luhn_is_valid,
)
from pipeline.privacy.corpus_zh import chinese_paragraphs
from pipeline.privacy.edge import EdgeScreen
from pipeline.privacy.evaluate import score_typed
from pipeline.privacy.policy import ENTITY_TYPES, PrivacyPolicy
from pipeline.privacy.text import find_entities, pattern_entity_types

SECRET = b"s" * 32
_NEW_TYPES = ["CN_RESIDENT_ID_UNVERIFIED", "CN_BANK_CARD", "CN_USCC", "CN_PASSPORT", "CN_IM_ID"]


# Check digits computed here from the standards, apart from the code under test.
def resident_id(first17: str, is_valid: bool = True) -> str:
    weights = [2 ** (17 - i) % 11 for i in range(17)]  # GB 11643: W_i = 2^(i-1) mod 11
    check = "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights, strict=True)) % 11]
    if not is_valid:
        check = "10X98765432"[("10X98765432".index(check) + 3) % 11]
    return first17 + check


def luhn_complete(partial: str) -> str:
    digits = [int(d) for d in partial]
    total = sum(sum(divmod(d * 2, 10)) if i % 2 == 0 else d for i, d in enumerate(digits[::-1]))
    return partial + str(-total % 10)


def uscc(first17: str) -> str:
    chars = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    weights = [3 ** i % 31 for i in range(17)]  # GB 32100: W_i = 3^(i-1) mod 31
    check = 31 - sum(chars.index(c) * w for c, w in zip(first17, weights, strict=True)) % 31
    return first17 + chars[check % 31]


@pytest.fixture(scope="module")
def analyzer():
    return build_analyzer()


def spans(analyzer, text: str) -> list[tuple[str, str]]:
    return [(s.entity_type, text[s.start : s.end]) for s in find_entities(text, analyzer, "zh")]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("请发到邮箱zhangwei@163.com谢谢", "zhangwei@163.com"),
        ("邮箱：li.na+shop@foxmail.com，电话另告", "li.na+shop@foxmail.com"),
        ("（联系人邮箱wang_fang88@huaxin-tech.com.cn）", "wang_fang88@huaxin-tech.com.cn"),
        ("作业发到12345678@qq.com。", "12345678@qq.com"),
        ("导师邮箱chen.jie2019@mail.ustc.edu.cn；办公室电话另行通知", "chen.jie2019@mail.ustc.edu.cn"),
        ("Write to jane.doe@example.co.uk, thanks", "jane.doe@example.co.uk"),
        ("邮箱zw＠sina.com（防爬写法）", "zw＠sina.com"),
    ],
)
def test_email_against_chinese_text_and_full_width_punctuation_has_exact_offsets(
    analyzer, text: str, address: str
) -> None:
    start = text.index(address)
    found = [(s.entity_type, s.start, s.end) for s in find_entities(text, analyzer, "zh")]
    assert found == [("EMAIL_ADDRESS", start, start + len(address))]


def test_an_email_with_an_unknown_suffix_is_not_reported(analyzer) -> None:
    assert spans(analyzer, "文件名是report@draft.docxx，不是邮箱") == []


def test_url_stops_where_chinese_text_begins(analyzer) -> None:
    text = "详情见https://www.example.com.cn/order?id=42。或者www.boyuan-edu.cn查看，文件report.pdf"
    assert spans(analyzer, text) == [
        ("URL", "https://www.example.com.cn/order?id=42"),
        ("URL", "www.boyuan-edu.cn"),
    ]


def test_resident_id_check_digit_follows_gb_11643() -> None:
    assert resident_id("11010519491231002") == "11010519491231002X"  # the standard's example
    assert cn_resident_id_is_valid("11010519491231002X")
    assert cn_resident_id_is_valid("11010519491231002x")
    assert not cn_resident_id_is_valid("110105194912310021")
    assert not cn_resident_id_is_valid("11010519491231002")


def test_uscc_check_character_follows_gb_32100() -> None:
    assert uscc("91350100M000100Y4") == "91350100M000100Y43"  # the example cited with the standard
    for code in ["91350100M000100Y43", uscc("91440300MA5D12345"), uscc("52110000500012345")]:
        assert cn_uscc_is_valid(code)
    assert not cn_uscc_is_valid("91350100M000100Y44")
    assert not cn_uscc_is_valid("91350100I000100Y43")  # I is not in the code's alphabet
    assert not cn_uscc_is_valid("91350100M000100Y4")


def test_luhn_and_mainland_card_prefixes() -> None:
    assert luhn_is_valid("79927398713") and not luhn_is_valid("79927398710")
    card = luhn_complete("622202123456789012")
    assert cn_bank_card_is_valid(card)
    assert cn_bank_card_is_valid(" ".join(card[i : i + 4] for i in range(0, 19, 4)))
    assert not cn_bank_card_is_valid(card[:-1] + str((int(card[-1]) + 1) % 10))
    assert not cn_bank_card_is_valid("4111111111111111")  # a card, but not one issued here
    assert not cn_bank_card_is_valid(luhn_complete("62220212345"))  # too short


def test_a_wrong_check_digit_is_reported_unverified_never_verified(analyzer) -> None:
    good = resident_id("44030619900101123")
    for first17 in ["44030619900101123", "62010219851130004", "11010520011231987"]:
        bad = resident_id(first17, is_valid=False)
        assert spans(analyzer, f"身份证号{bad}，请核对") == [("CN_RESIDENT_ID_UNVERIFIED", bad)]
    assert spans(analyzer, f"身份证号{good}，请核对") == [("CN_RESIDENT_ID", good)]


def test_an_impossible_birth_date_is_no_resident_id(analyzer) -> None:
    assert spans(analyzer, f"编号{resident_id('44030619900231123', is_valid=False)}") == []


def test_a_fifteen_digit_id_is_reported_only_after_an_id_label(analyzer) -> None:
    old = "110105491231002"
    assert spans(analyzer, f"老身份证号：{old}") == [("CN_RESIDENT_ID_UNVERIFIED", old)]
    assert spans(analyzer, f"设备串号{old}") == []
    assert spans(analyzer, f"老身份证号：{old[:6]}491331002") == []  # month 13


def test_a_mainland_card_is_one_bank_card_span_and_a_foreign_one_stays_credit_card(
    analyzer,
) -> None:
    unionpay16 = luhn_complete("622588123456789")
    unionpay19 = luhn_complete("621700123456789012")
    grouped = " ".join(unionpay19[i : i + 4] for i in range(0, 19, 4))
    assert spans(analyzer, f"卡号{unionpay16}，户名张伟") == [("CN_BANK_CARD", unionpay16)]
    assert spans(analyzer, f"Card {unionpay16} expires 09/27") == [("CN_BANK_CARD", unionpay16)]
    assert spans(analyzer, f"收款账号：{grouped}。") == [("CN_BANK_CARD", grouped)]
    assert spans(analyzer, "信用卡4111 1111 1111 1111本期已还") == [
        ("CREDIT_CARD", "4111 1111 1111 1111")
    ]


def test_a_card_number_with_a_wrong_luhn_digit_or_inside_a_longer_run_is_not_a_card(
    analyzer,
) -> None:
    card = luhn_complete("622202123456789")
    broken = card[:-1] + str((int(card[-1]) + 1) % 10)
    assert spans(analyzer, f"卡号{broken}") == []
    assert spans(analyzer, f"流水{card}0001") == []


def test_uscc_is_found_with_a_valid_check_character_only(analyzer) -> None:
    code = uscc("91440300MA5D12345")
    assert spans(analyzer, f"统一社会信用代码：{code}。") == [("CN_USCC", code)]
    assert spans(analyzer, f"税号{code.lower()}") == [("CN_USCC", code.lower())]
    wrong = code[:-1] + ("0" if code[-1] != "0" else "1")
    assert spans(analyzer, f"统一社会信用代码：{wrong}。") == []


@pytest.mark.parametrize("passport", ["E12345678", "G87654321", "EA1234567"])
def test_a_passport_is_reported_after_its_label_only(analyzer, passport: str) -> None:
    assert spans(analyzer, f"护照号码{passport}，有效期至2030年") == [("CN_PASSPORT", passport)]
    assert spans(analyzer, f"Passport No. {passport}") == [("CN_PASSPORT", passport)]
    assert spans(analyzer, f"货号{passport}，库存12件") == []


@pytest.mark.parametrize(
    "landline",
    ["010-12345678", "(0755)12345678", "（0755）8765 4321", "0755 1234 5678", "021-1234567-801",
     "+86 10 12345678", "+86-755-87654321", "010-88886666转123"],
)
def test_landlines_with_an_area_code_are_phone_numbers(analyzer, landline: str) -> None:
    assert spans(analyzer, f"座机{landline}，工作日可打") == [("PHONE_NUMBER", landline)]


def test_no_landline_is_taken_out_of_a_card_or_a_resident_id(analyzer) -> None:
    card = luhn_complete("622202075512345678")
    grouped = " ".join(card[i : i + 4] for i in range(0, 19, 4))
    rid = resident_id("44030619900101123")
    assert spans(analyzer, f"卡号{grouped}") == [("CN_BANK_CARD", grouped)]
    assert spans(analyzer, f"身份证{rid}") == [("CN_RESIDENT_ID", rid)]
    assert spans(analyzer, f"证件 0755 {rid[4:]}") == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("QQ：123456789，晚上在线", "123456789"),
        ("我的qq是 87654321", "87654321"),
        ("扣扣10086123", "10086123"),
        ("微信号：zhang_wei88", "zhang_wei88"),
        ("加vx lily-2020 备注来意", "lily-2020"),
        ("WeChat ID: Tony_Li1990", "Tony_Li1990"),
    ],
)
def test_qq_and_wechat_ids_after_their_label_are_im_ids(analyzer, text: str, value: str) -> None:
    assert spans(analyzer, text) == [("CN_IM_ID", value)]


def test_im_ids_need_their_label_and_a_mobile_as_wechat_id_is_one_span(analyzer) -> None:
    assert spans(analyzer, "QQ群：123456789") == []
    assert spans(analyzer, "工号123456789，账号zhang_wei88") == []
    assert spans(analyzer, "Add me on WeChat: please, thanks") == []
    assert spans(analyzer, "微信：zhangwei，电话联系") == [("CN_IM_ID", "zhangwei")]
    assert spans(analyzer, "微信：13812345678") == [("PHONE_NUMBER", "13812345678")]
    assert spans(analyzer, "微信同手机号13812345678") == [("PHONE_NUMBER", "13812345678")]


@pytest.mark.parametrize(
    "text",
    [
        "订单号2024061512345678已支付，金额1,380.00元，日期2024-06-15 14:30。",
        "发票代码051049837986，发票号码03821765，价税合计¥12,800.00。",
        "发票代码031001900111已作废，请重新开具。",
        "您的快递SF1234567890123已签收，中通运单75312345678901在途。",
        "设备IMEI：861234567890123，型号HW-P40-128G，货号SKU-A1234567。",
        "G1234次列车14:05发车，座位06车12F，票价553.50元。",
        "订单编号202406151234567890，共3件，实付人民币299.00元。",
        "验证码482913，5分钟内有效；学号20210312，工号A10234。",
        "Order 2024061512345678 shipped on 2024-06-15, total $1,380.00.",
    ],
)
def test_look_alikes_are_not_reported(analyzer, text: str) -> None:
    assert spans(analyzer, text) == []


def test_chinese_prose_without_personal_data_has_no_spans(analyzer) -> None:
    prose = [
        "今天上午，学校组织全体学生观看了消防安全宣传片，并进行了疏散演练。",
        "本店周末推出满二百减三十活动，会员积分可以抵扣现金，欢迎新老顾客光临。",
        "会议决定下季度重点推进用户调研，市场部和研发中心分别提交方案，月底前汇总。",
        "第三季度营收同比增长百分之十二，其中线上渠道贡献最大，线下门店基本持平。",
        "请各位家长提醒孩子按时完成寒假作业，开学第一周将进行检查。",
        "新版本修复了若干已知问题，优化了启动速度，并新增夜间模式。",
    ]
    assert [spans(analyzer, text) for text in prose] == [[] for _ in prose]


def test_new_types_have_default_operators_and_are_masked_in_pushes() -> None:
    policy = PrivacyPolicy.default()
    assert set(_NEW_TYPES) <= ENTITY_TYPES
    assert {t: policy.operator_for(t) for t in _NEW_TYPES} == {
        "CN_RESIDENT_ID_UNVERIFIED": "drop",
        "CN_BANK_CARD": "drop",
        "CN_USCC": "drop",
        "CN_PASSPORT": "drop",
        "CN_IM_ID": "pseudonymize",
    }
    assert {policy.push_operator_for(t) for t in _NEW_TYPES} == {"mask"}


def test_the_edge_masks_a_mainland_card_in_a_push_and_refuses_it_as_a_user_id() -> None:
    screen = EdgeScreen()
    card = luhn_complete("621700123456789012")
    pushed = screen.push_text("到账提醒", f"尾号卡{card}收到转账，QQ：123456789",
                              {}, PrivacyPolicy.default(), SECRET)
    assert pushed.body == "尾号卡****收到转账，QQ：****"
    assert pushed.replaced == {"CN_BANK_CARD": 1, "CN_IM_ID": 1}
    with pytest.raises(ValueError, match="CN_BANK_CARD"):
        screen.user_id(card, PrivacyPolicy.default(), SECRET, "user_id")


@pytest.mark.parametrize("seed", [7, 20240615])
def test_generated_paragraphs_are_found_with_high_recall_and_precision(analyzer, seed: int) -> None:
    paragraphs = chinese_paragraphs(seed, 500)
    assert paragraphs == chinese_paragraphs(seed, 500)  # seeded: the same corpus every run
    types = pattern_entity_types(analyzer, "zh")  # NER's names and places are not labelled
    score = score_typed(paragraphs, lambda text: [
        (s.entity_type, s.start, s.end) for s in find_entities(text, analyzer, "zh") if s.entity_type in types
    ])
    gold, found, true_predicted, predicted = score.gold, score.found, score.true_predicted, score.predicted
    recall, precision = score.recall(), score.precision
    print(f"\nseed {seed}: {len(paragraphs)} paragraphs, {sum(gold.values())} gold spans")
    print(f"{'type':<28}{'gold':>6}{'found':>7}{'recall':>8}")
    for kind in sorted(gold):
        print(f"{kind:<28}{gold[kind]:>6}{found[kind]:>7}{recall[kind]:>8.3f}")
    print(f"precision {true_predicted}/{predicted} = {precision:.3f}")
    assert recall["PHONE_NUMBER (mobile)"] >= 0.95
    assert recall["EMAIL_ADDRESS"] >= 0.95
    assert recall["CN_RESIDENT_ID"] == 1.0
    assert recall["CN_RESIDENT_ID_UNVERIFIED"] == 1.0
    assert precision >= 0.95
