"""Privacy step: find personal data in columns and free text; pseudonymise, drop or generalise."""

from pipeline.privacy.analyzer import build_analyzer, cn_resident_id_is_valid, ner_languages
from pipeline.privacy.operators import pseudonymize
from pipeline.privacy.policy import ENTITY_TYPES, OPERATORS, PrivacyPolicy
from pipeline.privacy.pool import TextAnalyzerPool
from pipeline.privacy.store import (
    load_policy,
    recent_audits,
    record_audit,
    save_policy,
    tenant_policy,
)
from pipeline.privacy.table import TEXT, PrivacyAudit, anonymize_table, detect_columns, scan_table
from pipeline.privacy.text import Span, anonymize_texts, find_entities, find_entities_batch

__all__ = [
    "ENTITY_TYPES",
    "OPERATORS",
    "TEXT",
    "PrivacyAudit",
    "PrivacyPolicy",
    "Span",
    "TextAnalyzerPool",
    "anonymize_table",
    "anonymize_texts",
    "build_analyzer",
    "cn_resident_id_is_valid",
    "detect_columns",
    "find_entities",
    "find_entities_batch",
    "load_policy",
    "ner_languages",
    "pseudonymize",
    "recent_audits",
    "record_audit",
    "save_policy",
    "scan_table",
    "tenant_policy",
]
