"""A tenant's privacy policy: which operator applies to which entity type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from pipeline.errors import InvalidInputError

__all__ = ["ENTITY_TYPES", "OPERATORS", "PrivacyPolicy"]

OPERATORS = frozenset({"drop", "pseudonymize", "mask", "generalize", "keep"})
ENTITY_TYPES = frozenset(
    {
        "AGE",
        "CN_RESIDENT_ID",
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
        "US_SSN",
    }
)
_DEFAULT_OPERATORS = {
    "EMAIL_ADDRESS": "pseudonymize",
    "PHONE_NUMBER": "pseudonymize",
    "IP_ADDRESS": "pseudonymize",
    "PERSON": "drop",
    "CN_RESIDENT_ID": "drop",
    "CREDIT_CARD": "drop",
    "IBAN_CODE": "drop",
    "US_SSN": "drop",
    "LOCATION": "generalize",
    "AGE": "generalize",
}


def _check_operator(operator: object, entity_type: str) -> str | None:
    if operator not in OPERATORS:
        return (
            f"unknown operator {operator!r} for {entity_type}; "
            f"use one of {', '.join(sorted(OPERATORS))}"
        )
    return None


@dataclass(frozen=True)
class PrivacyPolicy:
    """Entity type -> operator; `default_operator` covers types the mapping does not name."""

    operators: Mapping[str, str] = field(default_factory=dict)
    default_operator: str = "drop"

    def __post_init__(self) -> None:
        for entity_type, operator in self.operators.items():
            if entity_type not in ENTITY_TYPES:
                raise InvalidInputError(
                    "operators",
                    f"unknown entity type {entity_type!r}; "
                    f"use one of {', '.join(sorted(ENTITY_TYPES))}",
                )
            if problem := _check_operator(operator, entity_type):
                raise InvalidInputError("operators", problem)
        if problem := _check_operator(self.default_operator, "default_operator"):
            raise InvalidInputError("default_operator", problem)
        # Frozen dataclass, so use object.__setattr__; the proxy keeps the mapping read-only too.
        object.__setattr__(self, "operators", MappingProxyType(dict(self.operators)))

    def operator_for(self, entity_type: str) -> str:
        return self.operators.get(entity_type, self.default_operator)

    def to_dict(self) -> dict[str, object]:
        return {"operators": dict(self.operators), "default_operator": self.default_operator}

    @classmethod
    def default(cls) -> PrivacyPolicy:
        return cls(operators=_DEFAULT_OPERATORS, default_operator="drop")

    @classmethod
    def from_file(cls, path: str | Path) -> PrivacyPolicy:
        """Read a YAML or JSON policy: `{operators: {ENTITY: operator}, default_operator: op}`."""
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
        operators: dict[str, str] = {}
        default_operator = "drop"
        for key, value in root.value:
            line = key.start_mark.line + 1
            if key.value == "default_operator":
                default_operator = _scalar(value, where, "default_operator")
                if problem := _check_operator(default_operator, "default_operator"):
                    raise InvalidInputError(where, f"line {value.start_mark.line + 1}: {problem}")
            elif key.value == "operators":
                if not isinstance(value, yaml.MappingNode):
                    raise InvalidInputError(
                        where,
                        f"line {value.start_mark.line + 1}: operators is not a mapping "
                        "of entity type to operator",
                    )
                for entity_node, operator_node in value.value:
                    entity_line = entity_node.start_mark.line + 1
                    entity_type = _scalar(entity_node, where, "entity type")
                    if entity_type not in ENTITY_TYPES:
                        raise InvalidInputError(
                            where,
                            f"line {entity_line}: unknown entity type {entity_type!r}; "
                            f"use one of {', '.join(sorted(ENTITY_TYPES))}",
                        )
                    operator = _scalar(operator_node, where, entity_type)
                    if problem := _check_operator(operator, entity_type):
                        raise InvalidInputError(
                            where, f"line {operator_node.start_mark.line + 1}: {problem}"
                        )
                    operators[entity_type] = operator
            else:
                raise InvalidInputError(
                    where,
                    f"line {line}: unknown key {key.value!r}; "
                    "expected `operators` and optionally `default_operator`",
                )
        return cls(operators=operators, default_operator=default_operator)


def _scalar(node: yaml.Node, where: str, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise InvalidInputError(
            where,
            f"line {node.start_mark.line + 1}: {what} must be a single word, not a list or mapping",
        )
    return str(node.value)
