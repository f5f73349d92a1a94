"""A tenant's privacy policy: which operator applies to which entity type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from pipeline.errors import InvalidInputError

__all__ = ["ENTITY_TYPES", "OPERATORS", "PUSH_OPERATORS", "USER_ID_MODES", "PrivacyPolicy"]

OPERATORS = frozenset({"drop", "pseudonymize", "mask", "generalize", "keep"})
# Push text can also be refused as a whole: the sender gets a 422 and nothing is stored.
PUSH_OPERATORS = OPERATORS | {"reject"}
USER_ID_MODES = frozenset({"reject", "pseudonymize"})
ENTITY_TYPES = frozenset(
    {
        "ADDRESS",
        "AGE",
        "CN_BANK_CARD",
        "CN_IM_ID",
        "CN_PASSPORT",
        "CN_RESIDENT_ID",
        "CN_RESIDENT_ID_UNVERIFIED",
        "CN_USCC",
        "CREDIT_CARD",
        "DATE_TIME",
        "EMAIL_ADDRESS",
        "IBAN_CODE",
        "IP_ADDRESS",
        "LOCATION",
        "NRP",
        "ORGANIZATION",
        "PERSON",
        "PHONE_NUMBER",
        "URL",
        "US_DRIVER_LICENSE",
        "US_PASSPORT",
        "US_SSN",
    }
)
_DEFAULT_OPERATORS = {
    "EMAIL_ADDRESS": "pseudonymize",
    "PHONE_NUMBER": "pseudonymize",
    "IP_ADDRESS": "pseudonymize",
    "PERSON": "drop",
    "CN_RESIDENT_ID": "drop",
    "CN_RESIDENT_ID_UNVERIFIED": "drop",
    "CN_PASSPORT": "drop",
    "CN_BANK_CARD": "drop",
    "CN_USCC": "drop",
    "CN_IM_ID": "pseudonymize",
    "CREDIT_CARD": "drop",
    "IBAN_CODE": "drop",
    "US_SSN": "drop",
    "US_PASSPORT": "drop",
    "US_DRIVER_LICENSE": "drop",
    "ADDRESS": "drop",
    "LOCATION": "generalize",
    "AGE": "generalize",
}
# What a push's title, body and data may carry: the user reads "****" where a number was.
# Names, places and dates stay (default keep): a push is written for its reader.
_DEFAULT_PUSH_OPERATORS = dict.fromkeys(
    [
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "IBAN_CODE",
        "US_SSN",
        "US_PASSPORT",
        "US_DRIVER_LICENSE",
        "CN_RESIDENT_ID",
        "CN_RESIDENT_ID_UNVERIFIED",
        "CN_PASSPORT",
        "CN_BANK_CARD",
        "CN_USCC",
        "CN_IM_ID",
        "IP_ADDRESS",
    ],
    "mask",
)


def _check_operator(
    operator: object, entity_type: str, allowed: frozenset[str] = OPERATORS
) -> str | None:
    if operator not in allowed:
        return (
            f"unknown operator {operator!r} for {entity_type}; "
            f"use one of {', '.join(sorted(allowed))}"
        )
    return None


def _check_entity_type(entity_type: str) -> str | None:
    if entity_type not in ENTITY_TYPES:
        return f"unknown entity type {entity_type!r}; use one of {', '.join(sorted(ENTITY_TYPES))}"
    return None


def _check_user_id_mode(mode: object) -> str | None:
    if mode not in USER_ID_MODES:
        return (
            f"unknown user_ids mode {mode!r}; use reject (a PII-shaped user id gets a 422) or "
            "pseudonymize (it is stored as its HMAC pseudonym)"
        )
    return None


@dataclass(frozen=True)
class PrivacyPolicy:
    """Entity type -> operator; `default_operator` covers types the mapping does not name.

    `operators` govern the batch path (tables, notes). What arrives over HTTP has its own
    rules: `user_ids` says what a PII-shaped user id gets, and `push_operators` (over the
    defaults, entry by entry; `push_default_operator` for the rest) govern push text.
    """

    operators: Mapping[str, str] = field(default_factory=dict)
    default_operator: str = "drop"
    user_ids: str = "reject"
    push_operators: Mapping[str, str] = field(default_factory=dict)
    push_default_operator: str = "keep"

    def __post_init__(self) -> None:
        for name, allowed in (("operators", OPERATORS), ("push_operators", PUSH_OPERATORS)):
            for entity_type, operator in getattr(self, name).items():
                if problem := _check_entity_type(entity_type):
                    raise InvalidInputError(name, problem)
                if problem := _check_operator(operator, entity_type, allowed):
                    raise InvalidInputError(name, problem)
        if problem := _check_operator(self.default_operator, "default_operator"):
            raise InvalidInputError("default_operator", problem)
        if problem := _check_operator(
            self.push_default_operator, "push_default_operator", PUSH_OPERATORS
        ):
            raise InvalidInputError("push_default_operator", problem)
        if problem := _check_user_id_mode(self.user_ids):
            raise InvalidInputError("user_ids", problem)
        # Frozen dataclass, so use object.__setattr__; the proxy keeps the mapping read-only too.
        object.__setattr__(self, "operators", MappingProxyType(dict(self.operators)))
        # A tenant naming one type must not unmask the others, so its entries go over the defaults.
        object.__setattr__(
            self,
            "push_operators",
            MappingProxyType({**_DEFAULT_PUSH_OPERATORS, **self.push_operators}),
        )

    def operator_for(self, entity_type: str) -> str:
        return self.operators.get(entity_type, self.default_operator)

    def push_operator_for(self, entity_type: str) -> str:
        return self.push_operators.get(entity_type, self.push_default_operator)

    def to_dict(self) -> dict[str, object]:
        return {
            "operators": dict(self.operators),
            "default_operator": self.default_operator,
            "user_ids": self.user_ids,
            "push_operators": dict(self.push_operators),
            "push_default_operator": self.push_default_operator,
        }

    @classmethod
    def default(cls) -> PrivacyPolicy:
        return cls(operators=_DEFAULT_OPERATORS, default_operator="drop")

    @classmethod
    def from_file(cls, path: str | Path) -> PrivacyPolicy:
        """Read a YAML or JSON policy: `{operators: {ENTITY: operator}, default_operator: op}`.

        Optional keys for what arrives over HTTP: `user_ids: reject|pseudonymize`,
        `push_operators: {ENTITY: operator}` and `push_default_operator: op`.
        """
        path = Path(path)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise InvalidInputError(where, f"cannot read the policy file: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise InvalidInputError(where, f"the policy file is not UTF-8 text: {e.reason}") from e
        return cls.from_text(text, where)

    @classmethod
    def from_text(cls, text: str, where: str = "policy") -> PrivacyPolicy:
        """Parse YAML or JSON policy text; errors name `where`, the line and the problem."""
        try:
            # JSON is YAML too, and composing keeps each node's line for error messages.
            root = yaml.compose(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e)
            raise InvalidInputError(where, f"{line}not valid YAML or JSON: {problem}") from e
        return cls._from_node(root, where)

    @classmethod
    def _from_node(cls, root: yaml.Node | None, where: str) -> PrivacyPolicy:
        if not isinstance(root, yaml.MappingNode):
            line = root.start_mark.line + 1 if root is not None else 1
            raise InvalidInputError(
                where, f"line {line}: the policy is not a mapping; expected `operators: {{...}}`"
            )
        fields: dict[str, object] = {}
        for key, value in root.value:
            line = key.start_mark.line + 1
            value_line = value.start_mark.line + 1
            if key.value in ("default_operator", "push_default_operator"):
                allowed = OPERATORS if key.value == "default_operator" else PUSH_OPERATORS
                operator = _scalar(value, where, key.value)
                if problem := _check_operator(operator, key.value, allowed):
                    raise InvalidInputError(where, f"line {value_line}: {problem}")
                fields[key.value] = operator
            elif key.value == "user_ids":
                mode = _scalar(value, where, "user_ids")
                if problem := _check_user_id_mode(mode):
                    raise InvalidInputError(where, f"line {value_line}: {problem}")
                fields["user_ids"] = mode
            elif key.value in ("operators", "push_operators"):
                allowed = OPERATORS if key.value == "operators" else PUSH_OPERATORS
                fields[key.value] = _operator_map(value, where, key.value, allowed)
            else:
                raise InvalidInputError(
                    where,
                    f"line {line}: unknown key {key.value!r}; expected `operators` and optionally "
                    "`default_operator`, `user_ids`, `push_operators`, `push_default_operator`",
                )
        return cls(**fields)  # type: ignore[arg-type]


def _operator_map(
    node: yaml.Node, where: str, name: str, allowed: frozenset[str]
) -> dict[str, str]:
    if not isinstance(node, yaml.MappingNode):
        raise InvalidInputError(
            where,
            f"line {node.start_mark.line + 1}: {name} is not a mapping of entity type to operator",
        )
    operators: dict[str, str] = {}
    for entity_node, operator_node in node.value:
        entity_type = _scalar(entity_node, where, "entity type")
        if problem := _check_entity_type(entity_type):
            raise InvalidInputError(where, f"line {entity_node.start_mark.line + 1}: {problem}")
        operator = _scalar(operator_node, where, entity_type)
        if problem := _check_operator(operator, entity_type, allowed):
            raise InvalidInputError(where, f"line {operator_node.start_mark.line + 1}: {problem}")
        operators[entity_type] = operator
    return operators


def _scalar(node: yaml.Node, where: str, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise InvalidInputError(
            where,
            f"line {node.start_mark.line + 1}: {what} must be a single word, not a list or mapping",
        )
    return str(node.value)
