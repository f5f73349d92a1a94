"""Find personal data inside free text and replace it per the policy."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, NamedTuple

from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerResult
from presidio_analyzer.predefined_recognizers import SpacyRecognizer

from pipeline.errors import InvalidInputError
from pipeline.privacy.analyzer import build_analyzer
from pipeline.privacy.operators import check_secret, location_region, pseudonym
from pipeline.privacy.policy import PrivacyPolicy

if TYPE_CHECKING:
    from pipeline.privacy.pool import TextAnalyzerPool

__all__ = [
    "Span",
    "anonymize_texts",
    "find_entities",
    "find_entities_batch",
    "find_pattern_entities",
    "language_for",
    "pattern_entity_types",
    "replacement",
]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class Span(NamedTuple):
    """One piece of personal data found in a text: Presidio's entity type, offsets and score."""

    entity_type: str
    start: int
    end: int
    score: float


def replacement(value: str, entity_type: str, operator: str, secret: bytes) -> str:
    """What one detected span becomes under `operator`."""
    if operator == "pseudonymize":
        return pseudonym(value, secret, entity_type)
    if operator == "mask":
        return "****"
    if operator == "keep":
        return value
    if operator == "generalize" and entity_type == "LOCATION":
        return location_region(value)
    return f"<{entity_type}>"


_NAMED_ENTITIES = frozenset({"PERSON", "LOCATION", "ORGANIZATION", "NRP"})


def _trim_cjk(text: str, result: RecognizerResult) -> RecognizerResult:
    """Cut Chinese characters off a pattern match's ends.

    Presidio's e-mail pattern uses \\b, and Chinese characters are word characters, so in
    "邮箱zw@example.cn" it would take "邮箱" as part of the address.
    """
    if result.entity_type in _NAMED_ENTITIES:
        return result
    start, end = result.start, result.end
    while start < end and _CJK.match(text[start]):
        start += 1
    while end > start and _CJK.match(text[end - 1]):
        end -= 1
    result.start, result.end = start, end
    return result


def _merge_same_type(results: list[RecognizerResult]) -> list[RecognizerResult]:
    """Overlapping spans of one type become their union, so no piece of a number is left."""
    merged: list[RecognizerResult] = []
    for result in sorted(results, key=lambda r: (r.entity_type, r.start)):
        last = merged[-1] if merged else None
        if last is not None and last.entity_type == result.entity_type and result.start < last.end:
            last.end = max(last.end, result.end)
            last.score = max(last.score, result.score)
        else:
            merged.append(result)
    return merged


def _non_overlapping(results: list[RecognizerResult]) -> list[RecognizerResult]:
    """The most confident, then longest spans, none overlapping another; left to right."""
    kept: list[RecognizerResult] = []
    for result in sorted(_merge_same_type(results), key=lambda r: (-r.score, r.start - r.end)):
        if all(result.end <= k.start or result.start >= k.end for k in kept):
            kept.append(result)
    return sorted(kept, key=lambda r: r.start)


def language_for(text: str, language: str, supported: list[str]) -> str:
    """The language to analyse `text` in: Chinese when it has Chinese characters and "zh" is
    supported, else `language`."""
    if language != "zh" and "zh" in supported and _CJK.search(text):
        return "zh"
    return language


def _spans(text: str, results: list[RecognizerResult]) -> list[Span]:
    trimmed = [_trim_cjk(text, r) for r in results]
    return [
        Span(r.entity_type, r.start, r.end, float(r.score))
        for r in _non_overlapping([r for r in trimmed if r.end > r.start])
    ]


def find_entities(
    text: str,
    analyzer: AnalyzerEngine,
    language: str = "en",
    entities: Collection[str] | None = None,
) -> list[Span]:
    """Spans of personal data in `text`: trimmed, none overlapping, left to right.

    Text with Chinese characters is analysed as Chinese when the analyzer has "zh".
    `entities` narrows the search to those types (None: all).
    """
    lang = language_for(text, language, analyzer.supported_languages)
    wanted = None if entities is None else list(entities)
    return _spans(text, analyzer.analyze(text=text, language=lang, entities=wanted))


def _pattern_recognizers(analyzer: AnalyzerEngine, language: str) -> list[EntityRecognizer]:
    return [
        r
        for r in analyzer.registry.recognizers
        if r.supported_language == language and not isinstance(r, SpacyRecognizer)
    ]


def pattern_entity_types(analyzer: AnalyzerEngine, language: str = "en") -> frozenset[str]:
    """The entity types the analyzer finds without spaCy (patterns, phonenumbers, checksums)."""
    return frozenset(
        e for r in _pattern_recognizers(analyzer, language) for e in r.supported_entities
    )


def find_pattern_entities(
    text: str, analyzer: AnalyzerEngine, entities: Collection[str], language: str = "en"
) -> list[Span]:
    """find_entities for `entities` by the analyzer's pattern recognizers alone.

    spaCy does not run, so a short text costs tens of microseconds, not the NLP pipeline;
    for the types these recognizers cover, the spans are the ones find_entities gives.
    """
    wanted = set(entities)
    threshold = analyzer.default_score_threshold
    results = [
        result
        for recognizer in _pattern_recognizers(analyzer, language)
        if wanted.intersection(recognizer.supported_entities)
        for result in recognizer.analyze(text, sorted(wanted), None)
        if result.entity_type in wanted and result.score >= threshold
    ]
    return _spans(text, results)


def find_entities_batch(
    texts: Sequence[str],
    analyzer: AnalyzerEngine,
    language: str = "en",
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[list[Span]]:
    """find_entities for each text, with spaCy run over batches (nlp.pipe), not text by text;
    ``progress(1)`` after each text."""
    by_language: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        lang = language_for(text, language, analyzer.supported_languages)
        by_language.setdefault(lang, []).append(i)
    out: list[list[Span]] = [[] for _ in texts]
    for lang, positions in by_language.items():
        artifacts = analyzer.nlp_engine.process_batch(
            [texts[i] for i in positions], lang, batch_size=batch_size
        )
        for i, (_, nlp_artifacts) in zip(positions, artifacts, strict=True):
            results = analyzer.analyze(text=texts[i], language=lang, nlp_artifacts=nlp_artifacts)
            out[i] = _spans(texts[i], results)
            if progress is not None:
                progress(1)
    return out


def _check_language(language: str, analyzer: AnalyzerEngine) -> None:
    if language not in analyzer.supported_languages:
        raise InvalidInputError(
            "language",
            f"{language!r} is not analysed; use one of {', '.join(analyzer.supported_languages)}",
        )


def _replace_spans(
    text: str, spans: Sequence[Span], policy: PrivacyPolicy, key: bytes
) -> tuple[str, Counter[str]]:
    found: Counter[str] = Counter()
    pieces: list[str] = []
    end = 0
    for span in spans:
        operator = policy.operator_for(span.entity_type)
        if operator == "keep":
            continue
        found[span.entity_type] += 1
        pieces += [
            text[end : span.start],
            replacement(text[span.start : span.end], span.entity_type, operator, key),
        ]
        end = span.end
    pieces.append(text[end:])
    return "".join(pieces), found


def anonymize_texts(
    texts: Sequence[str],
    secret: bytes,
    policy: PrivacyPolicy,
    analyzer: AnalyzerEngine | None = None,
    language: str = "en",
    pool: TextAnalyzerPool | None = None,
) -> tuple[list[str], Counter[str]]:
    """Replace detected spans; each distinct non-empty text is analysed once.

    With `pool`, the distinct texts are analysed in its worker processes. Returns the new
    texts, in order, and how many spans of each entity type were replaced (repeated texts
    count once per occurrence).
    """
    check_secret(secret)
    key = bytes(secret)
    distinct = list(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip()))
    if pool is not None:
        if language not in pool.languages:
            raise InvalidInputError(
                "language", f"{language!r} is not analysed; use one of {', '.join(pool.languages)}"
            )
        all_spans = pool.find_entities(distinct, language)
    else:
        analyzer = analyzer if analyzer is not None else build_analyzer()
        _check_language(language, analyzer)
        all_spans = find_entities_batch(distinct, analyzer, language)
    done = {
        text: _replace_spans(text, spans, policy, key)
        for text, spans in zip(distinct, all_spans, strict=True)
    }
    out: list[str] = []
    counts: Counter[str] = Counter()
    for text in texts:
        if text in done:
            new_text, found = done[text]
            out.append(new_text)
            counts.update(found)
        else:
            out.append(text)
    return out, counts
