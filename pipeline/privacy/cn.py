"""Recognizers for personal data as it is written in mainland China, safe inside Chinese prose.

Chinese characters are word characters (\\w), so \\b finds no boundary in "电话13812345678" and a
\\w class runs on into "邮箱a@b.cn谢谢". Every pattern here therefore looks around with
ASCII-only classes and matches ASCII values only.

Where two recognizers can claim one string, the score decides (text.py keeps the higher of two
overlapping spans), so the scores below are an order, not a confidence:
resident ID and e-mail (validated, 1.0) > bank card (0.9) > USCC (0.85) > mobile (0.7) >
unverified resident ID, passport, IM id (0.6) > landline (0.5) > Presidio's phonenumbers (0.4).
A string shaped like a resident ID (province, real birth date) is never taken for a card or a
USCC, so a mistyped ID is reported as one.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any

from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, PhoneRecognizer

__all__ = [
    "CjkSafeCreditCardRecognizer",
    "CjkSafeEmailRecognizer",
    "CjkSafeUrlRecognizer",
    "CnBankCardRecognizer",
    "CnFirstGenerationIdRecognizer",
    "CnLandlineRecognizer",
    "CnMobileRecognizer",
    "CnPassportRecognizer",
    "CnQqRecognizer",
    "CnResidentIdRecognizer",
    "CnUnverifiedResidentIdRecognizer",
    "CnUsccRecognizer",
    "CnWeChatRecognizer",
    "LookalikeScreen",
    "PHONE_CONTEXT",
    "cn_bank_card_is_valid",
    "cn_resident_id_is_valid",
    "cn_uscc_is_valid",
    "luhn_is_valid",
]

PHONE_CONTEXT = [*PhoneRecognizer.CONTEXT, "tel", "电话", "手机", "联系"]

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"
# First two digits of an administrative division code: the provinces, then Taiwan, Hong Kong
# and Macau (whose residence permits carry 83, 81 and 82).
_PROVINCES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 "
    "61 62 63 64 65 71 81 82 83".split()
)
_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
# Issuer prefixes of cards issued in mainland China beyond UnionPay's 62: ICBC's old 9558,
# BOC's 601382, and a few Visa debit ranges from public BIN tables (not exhaustive). Other 4/5
# cards are left to CREDIT_CARD, which is dropped by default just the same.
_CN_CARD_PREFIXES = (
    "62",
    "9558",
    "601382",
    "436742",
    "436745",
    "427010",
    "427018",
    "427020",
    "427029",
    "427062",
    "456351",
    "410062",
    "403361",
    "404117",
    "404118",
    "404119",
    "404120",
    "404121",
)
_CARD_SEPARATORS = re.compile(r"[ \-]")

# ASCII only: a Chinese character next to a value is a boundary, a letter or digit is not.
_NOT_AFTER_ALNUM = r"(?<![0-9A-Za-z])"
_NOT_BEFORE_ALNUM = r"(?![0-9A-Za-z])"
# Nor is a digit one separator away: "6222 0212 ..." holds no landline or passport.
_NOT_IN_DIGIT_GROUPS = r"(?<![0-9A-Za-z])(?<!\d[ \-])"
_NOT_BEFORE_DIGIT_GROUPS = r"(?![0-9A-Za-z@])(?![ \-]\d)"


def _is_real_date(yyyymmdd: str) -> bool:
    try:
        datetime.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return False
    return True


def cn_resident_id_is_valid(value: str) -> bool:
    """Check an 18-character resident ID against its GB 11643-1999 check digit."""
    if len(value) != 18 or not value[:17].isdigit():
        return False
    total = sum(int(digit) * weight for digit, weight in zip(value[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARS[total % 11] == value[17].upper()


def _is_resident_id_shaped(value: str) -> bool:
    """18 characters with a province code and a real birth date, whatever the check digit."""
    return (
        len(value) == 18
        and value[:17].isdigit()
        and value[17] in "0123456789Xx"
        and value[:2] in _PROVINCES
        and _is_real_date(value[6:14])
    )


def luhn_is_valid(digits: str) -> bool:
    """The Luhn (mod 10) check that card numbers carry in their last digit.

    Parameters
    ----------
    digits : str
        The whole number, check digit last; anything but ASCII digits fails.

    Returns
    -------
    bool
    """
    if not digits.isdigit():
        return False
    total = 0
    for i, char in enumerate(reversed(digits)):
        digit = int(char) * (2 if i % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


def cn_bank_card_is_valid(value: str) -> bool:
    """A card issued in mainland China: 16-19 digits, a known prefix, a valid Luhn digit.

    Parameters
    ----------
    value : str
        The card number; spaces and dashes between digits are ignored.

    Returns
    -------
    bool
    """
    digits = _CARD_SEPARATORS.sub("", value)
    return (
        16 <= len(digits) <= 19
        and digits.startswith(_CN_CARD_PREFIXES)
        and luhn_is_valid(digits)
    )


def cn_uscc_is_valid(value: str) -> bool:
    """Check a unified social credit code against its GB 32100-2015 check character.

    Parameters
    ----------
    value : str
        18 characters of 0-9 and A-Y without I, O, S, V, Z; case is ignored.

    Returns
    -------
    bool
        Whether the 18th character is 31 - (weighted sum of the first 17 mod 31), 31 being 0.
    """
    code = value.upper()
    if len(code) != 18 or any(char not in _USCC_CHARS for char in code):
        return False
    total = sum(
        _USCC_CHARS.index(char) * weight
        for char, weight in zip(code[:17], _USCC_WEIGHTS, strict=True)
    )
    return _USCC_CHARS[(31 - total % 31) % 31] == code[17]


def _pattern(name: str, regex: str, score: float) -> list[Pattern]:
    return [Pattern(name, regex, score)]


class _CnPatternRecognizer(PatternRecognizer):
    """A PatternRecognizer built from class attributes, so each recognizer states only its data."""

    ENTITY = ""
    PATTERNS: list[Pattern] = []
    CONTEXT: list[str] = []

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            supported_entity=self.ENTITY,
            patterns=self.PATTERNS,
            context=self.CONTEXT,
            supported_language=supported_language,
            name=type(self).__name__,
        )


class _ContextGatedRecognizer(_CnPatternRecognizer):
    """Reports a match only when LABEL matches the text just before it.

    Presidio's own context boost needs lemmas, which our NER-only pipelines do not make
    (and the analyzer's context enhancer is a no-op), so the check is done here.
    """

    LABEL: re.Pattern[str] = re.compile("")
    WINDOW_CHARS = 20

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if self.is_labelled(text, r.start)]

    def is_labelled(self, text: str, start: int) -> bool:
        """Whether LABEL matches the WINDOW_CHARS characters before `start`."""
        return self.LABEL.search(text[max(0, start - self.WINDOW_CHARS) : start]) is not None


class LookalikeScreen(EntityRecognizer):
    """Another recognizer's results, less those right after a label naming a non-personal number.

    phonenumbers takes any run of digits that dials somewhere: "发票代码051049837986" is a
    valid Wuxi landline to it. The label before a number says what it is.
    """

    LABEL = re.compile(
        r"(?:发票代码|发票号码?|订单(?:编)?号|单号|编号|流水号|货号|批次号?|工号|学号|串号|序列号"
        r"|验证码|取件码|(?i:imei|sku|order|invoice|tracking)(?:\s?(?:no\.?|number|#))?)"
        r"\s*(?:是|为)?\s*[:：]?\s*$"
    )
    WINDOW_CHARS = 12

    def __init__(self, inner: EntityRecognizer):
        self._inner = inner
        super().__init__(
            supported_entities=inner.supported_entities,
            name=inner.name,
            supported_language=inner.supported_language,
            context=inner.context,
        )

    def load(self) -> None:
        """Nothing to load: the wrapped recognizer loaded itself."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        return [
            r
            for r in self._inner.analyze(text, entities, nlp_artifacts)
            if not self.LABEL.search(text[max(0, r.start - self.WINDOW_CHARS) : r.start])
        ]


class CnMobileRecognizer(_CnPatternRecognizer):
    """Mainland-China mobile numbers, also inside Chinese prose where no word boundary exists.

    The country code may come as +86, 0086, 86 or in brackets: (+86), （+86）.
    """

    ENTITY = "PHONE_NUMBER"
    PATTERNS = _pattern(
        "CN mobile",
        r"(?<![0-9A-Za-z+])(?:(?:\+|00)?86[ \-]?|[(（]\+?86[)）] ?)?1[3-9]\d(?:[ \-]?\d{4}){2}"
        r"(?![0-9A-Za-z])",
        0.7,
    )
    CONTEXT = PHONE_CONTEXT


class CnLandlineRecognizer(_CnPatternRecognizer):
    """Fixed lines with an area code: 010-12345678, (0755)1234 5678, +86 21 1234567-801.

    The area code must be set apart (dash, space, brackets, or +86 before it), so an order
    number that starts with 0 is not taken for a phone.
    """

    ENTITY = "PHONE_NUMBER"
    _AREA = r"(?:10|2\d|[3-9]\d{2})"
    _SUBSCRIBER = r"[1-9]\d{2,3}[ \-]?\d{4}"
    _EXTENSION = r"(?:(?:-|转|分机|ext\.? ?)\d{1,5})?"
    PATTERNS = [
        Pattern(
            "CN landline, area code apart",
            _NOT_IN_DIGIT_GROUPS + rf"0{_AREA}[ \-]{_SUBSCRIBER}{_EXTENSION}"
            + _NOT_BEFORE_DIGIT_GROUPS,
            0.5,
        ),
        Pattern(
            "CN landline, area code in brackets",
            rf"[(（]0{_AREA}[)）] ?{_SUBSCRIBER}{_EXTENSION}" + _NOT_BEFORE_DIGIT_GROUPS,
            0.5,
        ),
        Pattern(
            "CN landline, international",
            r"(?<![0-9A-Za-z+])(?:\+|00)86[ \-]?(?:\(0\)[ \-]?)?"
            + rf"{_AREA}[ \-]?{_SUBSCRIBER}{_EXTENSION}" + _NOT_BEFORE_DIGIT_GROUPS,
            0.5,
        ),
    ]
    CONTEXT = PHONE_CONTEXT


class CnResidentIdRecognizer(_CnPatternRecognizer):
    """18-digit resident ID numbers; only those with a valid check digit are reported."""

    ENTITY = "CN_RESIDENT_ID"
    PATTERNS = _pattern(
        "CN resident ID",
        r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])"
        r"(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9A-Za-z])",
        0.5,
    )
    CONTEXT = ["身份证", "id", "identity"]

    def validate_result(self, pattern_text: str) -> bool:
        return cn_resident_id_is_valid(pattern_text)


class CnUnverifiedResidentIdRecognizer(_CnPatternRecognizer):
    """18-digit resident IDs with a real birth date whose check digit is wrong.

    A mistyped digit still leaves a person's ID in the text, so it is reported, apart from the
    verified ones and with a lower score.
    """

    ENTITY = "CN_RESIDENT_ID_UNVERIFIED"
    PATTERNS = _pattern(
        "CN resident ID, check digit wrong",
        _NOT_AFTER_ALNUM + r"[1-8]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
        r"\d{3}[0-9Xx]" + _NOT_BEFORE_ALNUM,
        0.6,
    )
    CONTEXT = ["身份证", "id", "identity"]

    def invalidate_result(self, pattern_text: str) -> bool:
        return not _is_resident_id_shaped(pattern_text) or cn_resident_id_is_valid(pattern_text)


def _is_first_generation_id_shaped(value: str) -> bool:
    """15 digits with a province code and a real 19YYMMDD birth date."""
    return (
        len(value) == 15
        and value.isdigit()
        and value[:2] in _PROVINCES
        and _is_real_date("19" + value[6:12])
    )


class CnFirstGenerationIdRecognizer(_ContextGatedRecognizer):
    """15-digit first-generation resident IDs (19YYMMDD birth date, no check digit).

    Fifteen digits are common in order and device numbers (an IMEI has 15), so one is reported
    only after an ID label such as 身份证 or 证件号.
    """

    ENTITY = "CN_RESIDENT_ID_UNVERIFIED"
    PATTERNS = _pattern(
        "CN resident ID, 15 digits",
        _NOT_AFTER_ALNUM + r"[1-8]\d{14}" + _NOT_BEFORE_ALNUM,
        0.5,
    )
    LABEL = re.compile(r"身份证|证件|身份号码|(?<![A-Za-z])(?i:id|identity)(?![A-Za-z])")

    def invalidate_result(self, pattern_text: str) -> bool:
        return not _is_first_generation_id_shaped(pattern_text)


class CnBankCardRecognizer(_CnPatternRecognizer):
    """Bank cards issued in mainland China, written whole or in groups of four."""

    ENTITY = "CN_BANK_CARD"
    PATTERNS = _pattern(
        "CN bank card",
        _NOT_IN_DIGIT_GROUPS + r"\d{4}(?:[ \-]?\d{4}){3}(?:[ \-]?\d{1,3})?"
        + _NOT_BEFORE_DIGIT_GROUPS,
        0.9,
    )
    CONTEXT = ["银行卡", "卡号", "card", "bank"]

    def invalidate_result(self, pattern_text: str) -> bool:
        digits = _CARD_SEPARATORS.sub("", pattern_text)
        return not cn_bank_card_is_valid(digits) or _is_resident_id_shaped(digits)


class CjkSafeCreditCardRecognizer(CreditCardRecognizer):
    """Presidio's CreditCardRecognizer with ASCII boundaries; mainland cards are left to
    CnBankCardRecognizer, so one card gives one span of one type."""

    PATTERNS = _pattern(
        "All Credit Cards (weak), CJK-safe",
        _NOT_AFTER_ALNUM + r"(?!1\d{12}(?!\d))((4\d{3})|(5[0-5]\d{2})|(2[2-7]\d{2})|(6\d{3})|(1\d{3})|(3\d{3}))"
        r"[- ]?(\d{3,4})[- ]?(\d{3,4})[- ]?(\d{3,5})" + _NOT_BEFORE_ALNUM,
        0.3,
    )

    def __init__(self, supported_language: str = "en"):
        super().__init__(supported_language=supported_language, name=type(self).__name__)
        self._first_generation_ids = CnFirstGenerationIdRecognizer(supported_language)

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        # A labelled old resident ID can pass Luhn (one in ten do); it is an ID, not a card.
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [
            r for r in results
            if not (
                _is_first_generation_id_shaped(text[r.start : r.end])
                and self._first_generation_ids.is_labelled(text, r.start)
            )
        ]

    def invalidate_result(self, pattern_text: str) -> bool:
        return cn_bank_card_is_valid(pattern_text)


class CnUsccRecognizer(_CnPatternRecognizer):
    """Unified social credit codes (统一社会信用代码) whose check character is right."""

    ENTITY = "CN_USCC"
    # Registration authority (1-9, A, N, Y), organisation type, then a six-digit division code.
    PATTERNS = _pattern(
        "CN USCC",
        _NOT_AFTER_ALNUM + r"[1-9ANY][1-9]\d{6}[0-9A-HJ-NP-RTUWXY]{10}" + _NOT_BEFORE_ALNUM,
        0.85,
    )
    CONTEXT = ["统一社会信用代码", "信用代码", "税号"]

    def invalidate_result(self, pattern_text: str) -> bool:
        return (
            pattern_text[2:4] not in _PROVINCES
            or not cn_uscc_is_valid(pattern_text)
            or _is_resident_id_shaped(pattern_text)
        )


class CnPassportRecognizer(_ContextGatedRecognizer):
    """Passports: E or G and 8 digits, or E, a letter and 7 digits, after 护照 or passport.

    The shapes alone are ordinary codes (a product, a seat, a form), hence the label.
    """

    ENTITY = "CN_PASSPORT"
    PATTERNS = _pattern(
        "CN passport",
        _NOT_AFTER_ALNUM + r"(?:[EG]\d{8}|E[A-HJ-NP-Z]\d{7})" + _NOT_BEFORE_ALNUM,
        0.6,
    )
    LABEL = re.compile(r"护照|(?i:passport)")


class CnQqRecognizer(_ContextGatedRecognizer):
    """QQ numbers right after a QQ label: "QQ：12345678", "我的扣扣是 87654321"."""

    ENTITY = "CN_IM_ID"
    PATTERNS = _pattern("QQ number", _NOT_AFTER_ALNUM + r"[1-9]\d{4,10}(?![0-9A-Za-z@])", 0.6)
    LABEL = re.compile(r"(?i:qq|扣扣)(?:号码?|账号)?\s*(?:是|为|(?i:is))?\s*[:：]?\s*$")
    WINDOW_CHARS = 12


class CnWeChatRecognizer(_ContextGatedRecognizer):
    """WeChat ids right after a WeChat label: "微信号：zhang_wei88", "加vx lily-2020"."""

    ENTITY = "CN_IM_ID"
    PATTERNS = _pattern(
        "WeChat id", r"(?<![A-Za-z0-9_\-])[A-Za-z][A-Za-z0-9_\-]{5,19}(?![A-Za-z0-9_\-@.])", 0.6
    )
    LABEL = re.compile(
        r"(?:微信|(?i:wechat|weixin|vx|wx|v信))(?:号|账号|(?i:\s?id))?\s*(?:是|为|(?i:is))?\s*[:：]?\s*$"
    )
    # After an English label a word of letters only is as likely prose ("WeChat: please").
    _CHINESE_LABEL = re.compile(r"(?:微信|(?i:v信))(?:号|账号)?\s*(?:是|为)?\s*[:：]?\s*$")
    WINDOW_CHARS = 16

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        return [
            r
            for r in super().analyze(text, entities, nlp_artifacts, regex_flags)
            if not text[r.start : r.end].isalpha()
            or self._CHINESE_LABEL.search(text[max(0, r.start - self.WINDOW_CHARS) : r.start])
        ]


class _TldValidatedRecognizer(_CnPatternRecognizer):
    """A recognizer whose match holds a host name checked against a public-suffix list.

    The extractor is passed in, so the caller decides where the list comes from (the analyzer
    gives the snapshot bundled with tldextract; tldextract's default would fetch one).
    """

    def __init__(self, extract: Callable[[str], Any], supported_language: str = "en"):
        self._extract = extract
        super().__init__(supported_language=supported_language)

    def _is_known_host(self, host: str) -> bool:
        parts = self._extract(host)
        return bool(parts.fqdn or parts.ipv4)


# Latin letters with diacritics are allowed in an address ("josé@..."); CJK never is.
_LATIN = r"\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_LOCAL = rf"A-Za-z0-9_%+\-{_LATIN}"
_LABEL = rf"[A-Za-z0-9{_LATIN}](?:[A-Za-z0-9\-{_LATIN}]*[A-Za-z0-9{_LATIN}])?"


class CjkSafeEmailRecognizer(_TldValidatedRecognizer):
    """E-mail addresses that stop where Chinese text or full-width punctuation begins.

    Presidio's pattern uses \\w, so "邮箱zhangwei@163.com谢谢" became one match whose domain
    "com谢谢" failed validation. A full-width ＠ is accepted too.
    """

    ENTITY = "EMAIL_ADDRESS"
    PATTERNS = _pattern(
        "E-mail, CJK-safe",
        rf"(?<![{_LOCAL}.])[{_LOCAL}]+(?:\.[{_LOCAL}]+)*[@＠]{_LABEL}(?:\.{_LABEL})+"
        rf"(?![A-Za-z0-9\-{_LATIN}]|\.[A-Za-z0-9])",
        0.5,
    )
    CONTEXT = ["email", "e-mail", "邮箱", "邮件"]

    def validate_result(self, pattern_text: str) -> bool:
        return self._is_known_host(re.split(r"[@＠]", pattern_text)[-1])


_URL_HOST = re.compile(r"^(?:[a-z]+://)?(?:[^@/?#]*@)?([^/:?#]+)", re.IGNORECASE)


class CjkSafeUrlRecognizer(_TldValidatedRecognizer):
    """Web addresses with a scheme or "www.", ending where Chinese text begins.

    Bare host names are left alone: "report.pdf" and "main.py" have valid suffixes too.
    """

    ENTITY = "URL"
    _HOST = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)+"
    PATTERNS = _pattern(
        "URL, CJK-safe",
        _NOT_AFTER_ALNUM + r"(?:(?:https?|ftp)://(?:[A-Za-z0-9._~%!$&'*+,;=:\-]+@)?|www\.)"
        + _HOST
        + r"(?::\d{1,5})?(?:[/?#](?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*[A-Za-z0-9\-_~/#=&%+])?)?",
        0.6,
    )
    CONTEXT = ["url", "website", "link", "网址", "链接"]

    def validate_result(self, pattern_text: str) -> bool:
        host = _URL_HOST.match(pattern_text)
        return host is not None and self._is_known_host(host.group(1))
