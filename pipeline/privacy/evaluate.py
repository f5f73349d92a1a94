"""How well an analyzer finds personal data in labelled texts: token-level, untyped F2.

A token (a run of letters or digits) is personal when it lies in a labelled span and found when
it overlaps a detected span; the type does not matter (a street typed LOCATION instead of
ADDRESS is still removed). F2 weighs recall four times precision: a value left in the text is a
leak, a word replaced too many is a cost. The baselines are Presidio as it ships, with the same
spaCy model, and its pattern recognizers alone.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import SpacyNlpEngine

from pipeline.privacy.corpus_en import LabelledText

__all__ = [
    "Detector",
    "Score",
    "TypedScore",
    "presidio_stock",
    "score_detector",
    "score_typed",
    "token_counts",
]

Detector = Callable[[Sequence[str]], list[list[tuple[int, int]]]]
_TOKEN = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Score:
    """Token counts and the figures from them, overall and by source and by gold label."""

    tp: int
    fp: int
    fn: int
    by_source: dict[str, tuple[int, int, int]]
    recall_by_label: dict[str, float]

    @staticmethod
    def _f(tp: int, fp: int, fn: int, beta: float = 2.0) -> tuple[float, float, float]:
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        b2 = beta * beta
        denominator = b2 * precision + recall
        return precision, recall, (1 + b2) * precision * recall / denominator if denominator else 0.0

    @property
    def precision(self) -> float:
        return self._f(self.tp, self.fp, self.fn)[0]

    @property
    def recall(self) -> float:
        return self._f(self.tp, self.fp, self.fn)[1]

    @property
    def f2(self) -> float:
        return self._f(self.tp, self.fp, self.fn)[2]

    def f2_by_source(self) -> dict[str, float]:
        """F2 of each source that has personal data (a source without any has no recall)."""
        return {
            source: self._f(*counts)[2]
            for source, counts in sorted(self.by_source.items())
            if counts[0] + counts[2]
        }

    def clean_false_positives(self) -> int:
        """Tokens flagged in the sources that hold no personal data at all."""
        return sum(fp for tp, fp, fn in self.by_source.values() if tp + fn == 0)

    def worst_source_f2(self) -> float:
        return min(self.f2_by_source().values(), default=0.0)


def token_counts(
    item: LabelledText, found: Sequence[tuple[int, int]]
) -> tuple[int, int, int, Counter[str], Counter[str]]:
    """(tp, fp, fn, gold tokens per label, found gold tokens per label) for one text."""
    tp = fp = fn = 0
    gold_by_label: Counter[str] = Counter()
    hit_by_label: Counter[str] = Counter()
    for token in _TOKEN.finditer(item.text):
        start, end = token.span()
        label = next((lab for s, e, lab in item.spans if s < end and start < e), None)
        hit = any(s < end and start < e for s, e in found)
        if label is not None:
            gold_by_label[label] += 1
            if hit:
                tp += 1
                hit_by_label[label] += 1
            else:
                fn += 1
        elif hit:
            fp += 1
    return tp, fp, fn, gold_by_label, hit_by_label


def score_detector(items: Sequence[LabelledText], detector: Detector) -> Score:
    """Run `detector` over the texts and count its tokens."""
    found = detector([item.text for item in items])
    by_source: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    gold: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for item, spans in zip(items, found, strict=True):
        tp, fp, fn, gold_by_label, hit_by_label = token_counts(item, spans)
        counts = by_source[item.source]
        counts[0] += tp
        counts[1] += fp
        counts[2] += fn
        gold.update(gold_by_label)
        hits.update(hit_by_label)
    totals = [sum(c[i] for c in by_source.values()) for i in range(3)]
    return Score(
        tp=totals[0],
        fp=totals[1],
        fn=totals[2],
        by_source={source: (c[0], c[1], c[2]) for source, c in by_source.items()},
        recall_by_label={label: hits[label] / n for label, n in sorted(gold.items())},
    )


class _TokenizerOnly(SpacyNlpEngine):
    """spaCy's tokenizer alone: Presidio's pattern recognizers and context words still run."""

    def load(self) -> None:
        """The blank pipeline is set by the caller; nothing to load or download."""


def presidio_stock(spacy_model: str | None, threshold: float = 0.0) -> AnalyzerEngine:
    """Presidio's analyzer as it ships, English only: every predefined recognizer, spaCy's
    full pipeline and the context enhancer; `spacy_model` None for its patterns alone.

    The only change is that tldextract reads the suffix list bundled with it instead of
    fetching one (nothing may download here); the suffixes are the same.
    """
    import tldextract.tldextract as tld
    from presidio_analyzer import RecognizerRegistry

    tld.TLD_EXTRACTOR.suffix_list_urls = ()
    registry = RecognizerRegistry(supported_languages=["en"])
    if spacy_model is None:
        import spacy

        engine: SpacyNlpEngine = _TokenizerOnly(models=[{"lang_code": "en", "model_name": "blank"}])
        engine.nlp = {"en": spacy.blank("en")}
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
        registry.remove_recognizer("SpacyRecognizer")
    else:
        engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": spacy_model}])
        engine.load()
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=engine,
        supported_languages=["en"],
        default_score_threshold=threshold,
    )


def analyzer_detector(analyzer: AnalyzerEngine, progress: Callable[[int], None] | None = None) -> Detector:
    """A Detector from any Presidio analyzer: every result above its threshold counts."""

    def detect(texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        out = []
        for text in texts:
            out.append([(r.start, r.end) for r in analyzer.analyze(text=text, language="en")])
            if progress is not None:
                progress(1)
        return out

    return detect


def pushpilot_detector(analyzer: AnalyzerEngine, progress: Callable[[int], None] | None = None) -> Detector:
    """Our analyzer as the pipeline runs it: spaCy over batches, spans trimmed and merged."""
    from pipeline.privacy.text import find_entities_batch

    def detect(texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        found = find_entities_batch(list(texts), analyzer, progress=progress)
        return [[(s.start, s.end) for s in spans] for spans in found]

    return detect


def read_labelled(lines: Sequence[str]) -> list[LabelledText]:
    """Labelled texts from JSON lines: {"text", "spans": [[start, end, label], ...], "source"}.

    Raises ValueError naming the line for anything else, so a bad file changes nothing.
    """
    import json

    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {number}: not valid JSON: {e.msg}") from None
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"line {number}: expected an object with a text string")
        spans = row.get("spans", [])
        if not isinstance(spans, list):
            raise ValueError(f"line {number}: spans must be a list of [start, end, label]")
        checked = []
        for span in spans:
            ok = (isinstance(span, list) and len(span) == 3 and all(isinstance(v, int) for v in span[:2])
                  and isinstance(span[2], str) and 0 <= span[0] < span[1] <= len(text))
            if not ok:
                raise ValueError(f"line {number}: span {span!r} is not [start, end, label] inside the text")
            checked.append((span[0], span[1], span[2]))
        items.append(LabelledText(text, tuple(sorted(checked)), str(row.get("source", "file"))))
    return items


_CN_MOBILE = re.compile(r"1[3-9]\d{9}")


def _zh_kind(entity_type: str, value: str) -> str:
    """PHONE_NUMBER split into mobiles and landlines, the two the issue measures apart."""
    if entity_type != "PHONE_NUMBER":
        return entity_type
    digits = re.sub(r"^(?:00)?86(?=1\d{10}$)", "", re.sub(r"\D", "", value))
    return "PHONE_NUMBER (mobile)" if _CN_MOBILE.fullmatch(digits) else "PHONE_NUMBER (landline)"


@dataclass(frozen=True)
class TypedScore:
    """Per kind: gold spans and those found (80% of their characters covered by a span of the
    same type); then predicted spans overlapping any gold span, and all predicted spans."""

    gold: Counter[str]
    found: Counter[str]
    true_predicted: int
    predicted: int

    def recall(self) -> dict[str, float]:
        return {kind: self.found[kind] / n for kind, n in sorted(self.gold.items())}

    @property
    def precision(self) -> float:
        return self.true_predicted / self.predicted if self.predicted else 1.0


def score_typed(
    paragraphs: Sequence[dict[str, object]],
    predict: Callable[[str], list[tuple[str, int, int]]],
    progress: Callable[[int], None] | None = None,
) -> TypedScore:
    """Score `predict` (text -> [(type, start, end)]) on chinese_paragraphs-style records."""
    gold: Counter[str] = Counter()
    found: Counter[str] = Counter()
    true_predicted = predicted = 0
    for paragraph in paragraphs:
        text = str(paragraph["text"])
        spans: list[dict] = paragraph["spans"]  # type: ignore[assignment]
        predictions = predict(text)
        for span in spans:
            start, end = span["start"], span["end"]
            kind = _zh_kind(span["type"], text[start:end])
            gold[kind] += 1
            needed = 0.8 * (end - start)
            if any(t == span["type"] and min(e, end) - max(s, start) >= needed for t, s, e in predictions):
                found[kind] += 1
        predicted += len(predictions)
        true_predicted += sum(
            any(min(e, g["end"]) > max(s, g["start"]) for g in spans) for _, s, e in predictions
        )
        if progress is not None:
            progress(1)
    return TypedScore(gold, found, true_predicted, predicted)
