"""Privacy step: find personal data in columns and free text; pseudonymise, drop or generalise."""

from pipeline.privacy.analyzer import build_analyzer, cn_resident_id_is_valid
from pipeline.privacy.operators import pseudonymize
from pipeline.privacy.policy import ENTITY_TYPES, OPERATORS, PrivacyPolicy
from pipeline.privacy.table import TEXT, PrivacyAudit, anonymize_table, detect_columns
from pipeline.privacy.text import anonymize_texts

__all__ = [
    "ENTITY_TYPES",
    "OPERATORS",
    "TEXT",
    "PrivacyAudit",
    "PrivacyPolicy",
    "anonymize_table",
    "anonymize_texts",
    "build_analyzer",
    "cn_resident_id_is_valid",
    "detect_columns",
    "pseudonymize",
]
