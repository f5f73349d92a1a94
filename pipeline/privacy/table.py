"""Detect which columns hold personal data and anonymise a whole table per the policy."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
from presidio_analyzer import AnalyzerEngine

from pipeline.errors import InvalidInputError
from pipeline.privacy.analyzer import build_analyzer
from pipeline.privacy.operators import (
    check_secret,
    generalize_age,
    generalize_location,
    mask,
    pseudonymize,
)
from pipeline.privacy.policy import PrivacyPolicy
from pipeline.privacy.text import _CJK, anonymize_texts, find_entities_batch, replacement

if TYPE_CHECKING:
    from pipeline.privacy.pool import TextAnalyzerPool

__all__ = ["TEXT", "PrivacyAudit", "anonymize_table", "detect_columns", "scan_table"]

TEXT = "TEXT"

_EXACT_NAMES: dict[str, str] = {
    **dict.fromkeys(
        [
            "name",
            "first_name",
            "last_name",
            "full_name",
            "given_name",
            "family_name",
            "surname",
            "middle_name",
            "firstname",
            "lastname",
            "fullname",
            "customer_name",
            "contact_name",
            "user_name",
            "username",
            "nickname",
            "display_name",
            "姓名",
            "名字",
        ],
        "PERSON",
    ),
    **dict.fromkeys(
        [
            "id_number",
            "id_no",
            "id_card",
            "idcard",
            "resident_id",
            "national_id",
            "身份证",
            "身份证号",
        ],
        "CN_RESIDENT_ID",
    ),
    **dict.fromkeys(["card_number", "credit_card", "cc_number"], "CREDIT_CARD"),
    **dict.fromkeys(["age", "年龄"], "AGE"),
    **dict.fromkeys(["e_mail", "邮箱", "电子邮件"], "EMAIL_ADDRESS"),
    **dict.fromkeys(["手机", "手机号", "电话"], "PHONE_NUMBER"),
    **dict.fromkeys(["地址", "城市"], "LOCATION"),
}
_NAME_TOKENS: dict[str, str] = {
    **dict.fromkeys(["email", "mail", "emails"], "EMAIL_ADDRESS"),
    **dict.fromkeys(
        ["phone", "mobile", "tel", "telephone", "cell", "cellphone", "msisdn", "phones"],
        "PHONE_NUMBER",
    ),
    **dict.fromkeys(
        ["address", "addr", "street", "city", "zip", "zipcode", "postcode"], "LOCATION"
    ),
    **dict.fromkeys(["ip", "ipv4", "ipv6"], "IP_ADDRESS"),
    **dict.fromkeys(
        [
            "notes",
            "note",
            "comment",
            "comments",
            "remark",
            "remarks",
            "description",
            "bio",
            "feedback",
            "备注",
        ],
        TEXT,
    ),
}
_NON_WORD = re.compile(r"[^0-9a-z\u4e00-\u9fff]+")
_MIN_TEXT_CHARS = 25
_MIN_CJK_TEXT_CHARS = 10
_SPAN_COVERAGE = 0.6
_MAJORITY = 0.5
# Types the analyzer cannot find in text without an NER model; short numbers such as ages
# would match unrelated digits, so they are not looked for.
_ROW_SCRUBBED = frozenset({"PERSON", "LOCATION"})


@dataclass
class PrivacyAudit:
    """Per column, per entity type: how many values or spans were handled. Never the values."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, column: str, entity_type: str, n: int) -> None:
        if n:
            per_column = self.counts.setdefault(column, {})
            per_column[entity_type] = per_column.get(entity_type, 0) + int(n)

    def total(self) -> int:
        return sum(n for per_column in self.counts.values() for n in per_column.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "counts": {column: dict(per) for column, per in self.counts.items()},
            "total": self.total(),
        }


def _kind_from_name(column: str) -> str | None:
    name = _NON_WORD.sub("_", str(column).lower()).strip("_")
    if name in _EXACT_NAMES:
        return _EXACT_NAMES[name]
    return next((_NAME_TOKENS[t] for t in name.split("_") if t in _NAME_TOKENS), None)


def _kind_from_values(values: pd.Series, analyzer: AnalyzerEngine, sample_size: int) -> str | None:
    if not (pd.api.types.is_string_dtype(values) or values.dtype == object):
        return None
    distinct = pd.Series(values.dropna().astype(str).str.strip().unique())
    distinct = distinct[distinct != ""]
    if distinct.empty:
        return None
    sample = distinct.sample(n=min(sample_size, len(distinct)), random_state=0).tolist()
    lengths = [len(v) for v in sample]
    is_spaced = sum(" " in v for v in sample) / len(sample)
    is_cjk = sum(bool(_CJK.search(v)) for v in sample) / len(sample)
    mean_length = sum(lengths) / len(lengths)
    if (mean_length >= _MIN_TEXT_CHARS and is_spaced >= _MAJORITY) or (
        mean_length >= _MIN_CJK_TEXT_CHARS and is_cjk >= _MAJORITY
    ):
        return TEXT
    votes: Counter[str] = Counter()
    for value in sample:
        language = "zh" if _CJK.search(value) and "zh" in analyzer.supported_languages else "en"
        covering = {
            r.entity_type
            for r in analyzer.analyze(text=value, language=language)
            if (r.end - r.start) >= _SPAN_COVERAGE * len(value)
        }
        votes.update(covering)
    if votes:
        entity_type, n = votes.most_common(1)[0]
        if n >= _MAJORITY * len(sample):
            return entity_type
    return None


def detect_columns(
    df: pd.DataFrame, analyzer: AnalyzerEngine | None = None, sample_size: int = 100
) -> dict[str, str | None]:
    """The entity type each column holds ("TEXT" for free text, None for no personal data).

    The column name decides when it is telling; otherwise a sample of distinct values is analysed.
    """
    if sample_size < 1:
        raise InvalidInputError("sample_size", f"must be at least 1, got {sample_size}")
    kinds: dict[str, str | None] = {}
    for column in df.columns:
        kind = _kind_from_name(column)
        if kind is None:
            analyzer = analyzer if analyzer is not None else build_analyzer()
            kind = _kind_from_values(df[column], analyzer, sample_size)
        kinds[column] = kind
    return kinds


def scan_table(
    df: pd.DataFrame,
    analyzer: AnalyzerEngine | None = None,
    *,
    keep: Sequence[str] = ("user_id",),
) -> dict[str, dict[str, object]]:
    """Per column: the entity type it holds and how many values hold it; never the values.

    A free-text column ("TEXT") also counts the spans of each entity type found in it.
    """
    analyzer = analyzer if analyzer is not None else build_analyzer()
    kinds = detect_columns(df[[c for c in df.columns if c not in keep]], analyzer)
    report: dict[str, dict[str, object]] = {}
    for column in df.columns:
        kind = kinds.get(column)
        entry: dict[str, object] = {"entity_type": kind, "values": _count_present(df[column])}
        if kind == TEXT:
            occurrences = df[column].dropna().astype(str).value_counts()
            occurrences = occurrences[occurrences.index.str.strip() != ""]
            entities: Counter[str] = Counter()
            found = find_entities_batch(occurrences.index.tolist(), analyzer)
            for spans, n in zip(found, occurrences.tolist(), strict=True):
                for span in spans:
                    entities[span.entity_type] += int(n)
            entry["entities"] = dict(sorted(entities.items()))
        report[str(column)] = entry
    return report


def _count_present(values: pd.Series) -> int:
    present = values.dropna()
    return int((present.astype(str).str.strip() != "").sum())


def _apply(values: pd.Series, entity_type: str, operator: str, secret: bytes) -> pd.Series:
    if operator == "pseudonymize":
        return pseudonymize(values, secret, entity_type)
    if operator == "mask":
        return mask(values)
    if operator == "generalize" and entity_type == "AGE":
        return generalize_age(values)
    if operator == "generalize" and entity_type == "LOCATION":
        return generalize_location(values)
    # generalize of a type with no hierarchy: only the type is left.
    return mask(values).where(values.isna(), f"<{entity_type}>")


def _scrub_row_values(
    texts: list[object],
    row_values: list[tuple[str, str, pd.Series]],
    secret: bytes,
) -> tuple[list[object], Counter[str]]:
    """Replace each row's own structured values (e.g. its name) where its text repeats them.

    NER misses or splits names it has never seen, but the same row's name column tells us
    exactly what to look for.
    """
    found: Counter[str] = Counter()
    columns = [(t, op, s.astype("str").tolist()) for t, op, s in row_values]
    out: list[object] = []
    for i, text in enumerate(texts):
        if isinstance(text, str) and text:
            candidates = sorted(
                ((v, t, op) for t, op, vals in columns if isinstance(v := vals[i], str)),
                key=lambda c: -len(c[0]),
            )
            for value, entity_type, operator in candidates:
                value = value.strip()
                if len(value) >= 2 and value in text:
                    found[entity_type] += text.count(value)
                    text = text.replace(value, replacement(value, entity_type, operator, secret))
        out.append(text)
    return out, found


def anonymize_table(
    df: pd.DataFrame,
    secret: bytes,
    policy: PrivacyPolicy | None = None,
    *,
    analyzer: AnalyzerEngine | None = None,
    columns: Mapping[str, str | None] | None = None,
    keep: Sequence[str] = ("user_id",),
    pool: TextAnalyzerPool | None = None,
) -> tuple[pd.DataFrame, PrivacyAudit]:
    """A new frame with each personal-data column handled per `policy`; the input is untouched.

    `columns` fixes the entity type of the columns it names; the others are detected. A column
    whose operator is "drop" is left out of the result. `keep` columns pass through unchanged.
    Free-text columns are analysed in `pool`'s processes when one is given.
    """
    check_secret(secret)
    key = bytes(secret)
    policy = policy if policy is not None else PrivacyPolicy.default()
    if not df.columns.is_unique:
        raise InvalidInputError("df", "column names must be unique")
    given = dict(columns or {})
    if missing := [c for c in given if c not in df.columns]:
        raise InvalidInputError("columns", f"not in the frame: {', '.join(map(str, missing))}")
    undecided = [c for c in df.columns if c not in given and c not in keep]
    if undecided:
        analyzer = analyzer if analyzer is not None else build_analyzer()
    kinds = {**detect_columns(df[undecided], analyzer), **given}

    audit = PrivacyAudit()
    out: dict[str, pd.Series] = {}
    row_values: list[tuple[str, str, pd.Series]] = []
    for column in df.columns:
        kind = None if column in keep else kinds.get(column)
        values = df[column]
        if kind is None or kind == TEXT:
            out[column] = values
            continue
        operator = policy.operator_for(kind)
        if operator == "keep":
            out[column] = values
            continue
        audit.add(column, kind, _count_present(values))
        if kind in _ROW_SCRUBBED:
            row_values.append((kind, operator, values))
        if operator != "drop":
            out[column] = _apply(values, kind, operator, key)

    for column in (c for c in df.columns if c not in keep and kinds.get(c) == TEXT):
        # The row's own values go first: NER may take a piece of a name ("Zephyrine" as NRP),
        # and the rest of it ("Quillon") would no longer match the name column afterwards.
        texts, found_in_rows = _scrub_row_values(df[column].tolist(), row_values, key)
        new_texts, found = anonymize_texts(texts, key, policy, analyzer=analyzer, pool=pool)
        for entity_type, n in (found + found_in_rows).items():
            audit.add(column, entity_type, n)
        out[column] = pd.Series(new_texts, index=df.index, name=column, dtype=df[column].dtype)

    result = pd.DataFrame({c: out[c] for c in df.columns if c in out}, index=df.index)
    return result, audit
