"""Personal data at the HTTP edge: user ids and push text, screened before anything is stored.

The batch path screens tables and notes (``anonymize_table``); what arrives over HTTP would
otherwise go straight into Redis key names (an e-mail as ``...:inbox:<email>``), the AOF and
the devices. So every user id the API or CLI accepts passes ``EdgeScreen.user_ids``: one that
holds an e-mail, phone, card, IBAN, resident ID or IP address is refused (policy
``user_ids: reject``, the default) or stored as its pseudonym (``user_ids: pseudonymize``: the
span becomes the HMAC pseudonym the batch path gives the same value, so joins still work).
Push title, body and data pass ``EdgeScreen.push_text`` under the policy's ``push_operators``.

Only Presidio's pattern recognizers run here (no spaCy): a user id or a push is short, and
these are the types a pattern finds reliably. The detection of a string does not depend on the
tenant, so it is cached per process; the decision (policy, secret) is the tenant's.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from presidio_analyzer import AnalyzerEngine

from pipeline.errors import InvalidInputError
from pipeline.privacy.analyzer import build_analyzer
from pipeline.privacy.operators import check_secret
from pipeline.privacy.policy import PrivacyPolicy
from pipeline.privacy.text import (
    Span,
    find_pattern_entities,
    language_for,
    pattern_entity_types,
    replacement,
)

__all__ = ["EdgeScreen", "PushText", "USER_ID_PATTERN"]

# What a user id may look like at all (it becomes part of Redis key names).
USER_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"
_USER_ID = re.compile(USER_ID_PATTERN)
# What each type needs at the least, so a string is analysed only for the types it could hold
# (most ids hold none and are not analysed at all): phones have 7+ digits, cards 13+, IBANs
# 10+, resident ids 17+ (15 for the old ones), mainland bank cards 16+, a USCC's division code
# 6, a passport 7; an IPv4 address is a dotted quad, an IPv6 one has two colons; QQ and WeChat
# ids are only found after their label.
_DIGITS = re.compile(r"\d")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_IPV6 = re.compile(r":[0-9A-Fa-f]*:")
_IM_LABEL = re.compile(r"qq|扣扣|微信|wechat|weixin|vx|v信", re.IGNORECASE)
_MIN_DIGITS = {"PHONE_NUMBER": 7, "CREDIT_CARD": 13, "IBAN_CODE": 10, "CN_RESIDENT_ID": 17,
               "CN_RESIDENT_ID_UNVERIFIED": 15, "CN_BANK_CARD": 16, "CN_USCC": 6,
               "CN_PASSPORT": 7, "US_SSN": 9}
_CACHE_SIZE = 131_072


@dataclass(frozen=True)
class PushText:
    """A push's text after screening, and how many spans of each type were replaced."""

    title: str
    body: str
    data: dict[str, str]
    replaced: Counter[str]


class EdgeScreen:
    """One per process (an API replica, a CLI run): the pattern analyzer and its cache."""

    def __init__(self, analyzer: AnalyzerEngine | None = None):
        # NER is never needed here, so the blank pipeline is enough (and loads in a blink).
        self._analyzer = analyzer or build_analyzer(spacy_model="")
        self._types = {
            lang: pattern_entity_types(self._analyzer, lang)
            for lang in self._analyzer.supported_languages
        }
        self._find = lru_cache(maxsize=_CACHE_SIZE)(self._find_uncached)

    def _find_uncached(self, text: str, candidates: frozenset[str]) -> tuple[Span, ...]:
        lang = language_for(text, "en", self._analyzer.supported_languages)
        wanted = candidates & self._types[lang]
        if not wanted:
            return ()
        return tuple(find_pattern_entities(text, self._analyzer, wanted, lang))

    def find(self, text: str) -> tuple[Span, ...]:
        """The personal data a pattern finds in `text`, left to right."""
        if not text:
            return ()
        candidates = _candidates(text)
        return self._find(text, candidates) if candidates else ()

    def user_id(self, user_id: str, policy: PrivacyPolicy, secret: bytes, field: str) -> str:
        """The id to store for `user_id`: itself, or with its personal data pseudonymised.

        Raises InvalidInputError (naming `field`, never the value) for an id that is not an id
        at all, or one holding personal data under ``user_ids: reject``.
        """
        if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
            raise InvalidInputError(
                field, f"a user id is 1-128 of A-Z a-z 0-9 _ . : @ -, got {str(user_id)[:40]!r}"
            )
        spans = self.find(user_id)
        if not spans:
            return user_id
        kinds = ", ".join(sorted({s.entity_type for s in spans}))
        if policy.user_ids == "reject":
            raise InvalidInputError(
                field,
                f"the user id looks like personal data ({kinds}), which must not become a key "
                "name; send your own pseudonymous id for the user, or set `user_ids: "
                "pseudonymize` in the tenant's privacy policy to have it pseudonymised",
            )
        check_secret(secret)
        pieces: list[str] = []
        end = 0
        for span in spans:
            value = user_id[span.start : span.end]
            pieces += [user_id[end : span.start],
                       replacement(value, span.entity_type, "pseudonymize", secret)]
            end = span.end
        pieces.append(user_id[end:])
        stored = "".join(pieces)
        if not _USER_ID.fullmatch(stored):
            raise InvalidInputError(
                field, f"the user id holds personal data ({kinds}) and its pseudonymised form "
                "is over 128 characters; send a shorter id",
            )
        return stored

    def user_ids(
        self, user_ids: Sequence[str], policy: PrivacyPolicy, secret: bytes, field: str
    ) -> list[str]:
        """``user_id`` for each, fields named ``<field>.<i>``."""
        return [self.user_id(u, policy, secret, f"{field}.{i}") for i, u in enumerate(user_ids)]

    def push_text(
        self,
        title: str,
        body: str,
        data: Mapping[str, str],
        policy: PrivacyPolicy,
        secret: bytes,
        where: str = "",
    ) -> PushText:
        """Title, body and data values under the policy's push operators.

        An entity whose operator is ``reject`` refuses the whole push (InvalidInputError naming
        the field, after the prefix `where`); ``keep`` leaves it; the others replace the span
        as in the batch path.
        """
        replaced: Counter[str] = Counter()

        def screen(text: str, field: str) -> str:
            pieces: list[str] = []
            end = 0
            for span in self.find(text):
                operator = policy.push_operator_for(span.entity_type)
                if operator == "keep":
                    continue
                if operator == "reject":
                    raise InvalidInputError(
                        where + field,
                        f"holds personal data ({span.entity_type}) the tenant's privacy policy "
                        "refuses in pushes (push_operators); remove it or change the policy",
                    )
                replaced[span.entity_type] += 1
                pieces += [text[end : span.start],
                           replacement(text[span.start : span.end], span.entity_type, operator,
                                       secret)]
                end = span.end
            pieces.append(text[end:])
            return "".join(pieces)

        if any(policy.push_operator_for(t) == "pseudonymize" for t in self.types()):
            check_secret(secret)
        return PushText(
            title=screen(title, "title"),
            body=screen(body, "body"),
            data={screen(k, "data"): screen(v, f"data.{k}") for k, v in data.items()},
            replaced=replaced,
        )

    def types(self) -> frozenset[str]:
        """Every entity type this screen finds."""
        return frozenset().union(*self._types.values())


def _candidates(text: str) -> frozenset[str]:
    """The entity types `text` is long and shaped enough to hold."""
    digits = len(_DIGITS.findall(text))
    found = {t for t, least in _MIN_DIGITS.items() if digits >= least}
    if "@" in text or "＠" in text:
        found.add("EMAIL_ADDRESS")
    if _IPV4.search(text) or _IPV6.search(text):
        found.add("IP_ADDRESS")
    if _IM_LABEL.search(text):
        found.add("CN_IM_ID")
    return frozenset(found)
