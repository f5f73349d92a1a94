"""A campaign spec: who, what, when, and how it is measured; YAML or JSON, validated up front."""

from __future__ import annotations

import json
import re
import string
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import keys
from pipeline.errors import InvalidInputError
from pipeline.features import FEATURE_COLUMNS
from pipeline.outbox import CHANNELS, check_topic

__all__ = [
    "CAMPAIGN_ID_PATTERN",
    "SAFE_ATTRIBUTES",
    "Filter",
    "Audience",
    "Variant",
    "Selection",
    "FrequencyCap",
    "QuietHours",
    "Schedule",
    "CampaignSpec",
    "parse_spec",
    "template_fields",
]

CAMPAIGN_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Profile attributes a message may name: the privacy step leaves them as they are and none of
# them points at a person. Everything else in a profile (names, e-mails, phones, notes, city,
# age) is personal or pseudonymised and never reaches a message.
SAFE_ATTRIBUTES: tuple[str, ...] = ("country", "timezone", "language", "segment", "plan_tier")

_Strict = ConfigDict(extra="forbid", frozen=True)
_Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


def template_fields(text: str) -> list[str]:
    """The ``{field}`` names a template uses; ValueError for a malformed template."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"malformed template {text!r}: {e}") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"template field {{{name}}} must be a plain name like {{country}}, "
                "without indexing, format spec or conversion"
            )
        names.append(name)
    return names


class Filter(BaseModel):
    """One condition on a feature or a safe profile attribute; an audience ANDs them."""

    model_config = _Strict
    feature: str | None = None
    attribute: str | None = None
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in"]
    value: float | str | list[float | str]

    @model_validator(mode="after")
    def _one_subject(self) -> Filter:
        if (self.feature is None) == (self.attribute is None):
            raise ValueError("give exactly one of 'feature' or 'attribute'")
        if self.feature is not None and self.feature not in FEATURE_COLUMNS:
            raise ValueError(f"feature {self.feature!r} is not one of {list(FEATURE_COLUMNS)}")
        if self.attribute is not None and self.attribute not in SAFE_ATTRIBUTES:
            raise ValueError(
                f"attribute {self.attribute!r} is not a safe attribute; use one of {list(SAFE_ATTRIBUTES)}"
            )
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value, got {self.value!r}")
        if self.op not in ("in", "not_in") and isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a single value, got a list")
        if self.feature is not None and self.op in ("<", "<=", ">", ">=") and isinstance(self.value, str):
            raise ValueError(f"feature {self.feature!r} is numeric, got {self.value!r}")
        return self


class Audience(BaseModel):
    """All users with online features, narrowed by ``filters`` (none: everyone)."""

    model_config = _Strict
    filters: list[Filter] = Field(default_factory=list)

    @property
    def attributes(self) -> list[str]:
        return [f.attribute for f in self.filters if f.attribute is not None]


class Variant(BaseModel):
    model_config = _Strict
    name: _Name
    title: str = Field(default="", max_length=200)
    body: str = Field(min_length=1, max_length=2000)
    weight: float = Field(default=1.0, gt=0)

    @field_validator("title", "body")
    @classmethod
    def _safe_fields(cls, text: str) -> str:
        allowed = set(FEATURE_COLUMNS) | set(SAFE_ATTRIBUTES)
        for name in template_fields(text):
            if name not in allowed:
                raise ValueError(
                    f"template field {{{name}}} is not allowed: messages may only use safe "
                    f"attributes {list(SAFE_ATTRIBUTES)} or features"
                )
        return text


class Selection(BaseModel):
    """Rank eligible users by a model; keep those over ``threshold``, then at most ``top_k``,
    then as many as ``budget`` pushes allow (held-out users send nothing)."""

    model_config = _Strict
    rank_by: Literal["propensity", "uplift"] = "propensity"
    threshold: float | None = None
    top_k: int | None = Field(default=None, ge=1)
    budget: int | None = Field(default=None, ge=1, description="most pushes to send")


class FrequencyCap(BaseModel):
    model_config = _Strict
    per_day: int = Field(ge=1)


class QuietHours(BaseModel):
    """Local hours [start, end) in the user's time zone with no push; may wrap midnight."""

    model_config = _Strict
    start: int = Field(ge=0, le=23)
    end: int = Field(ge=0, le=23)

    def is_quiet(self, hour: int) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end


class Schedule(BaseModel):
    """Once ``at`` a time, or on a ``cron`` expression in ``timezone``; never after ``expires_at``."""

    model_config = _Strict
    at: datetime | None = None
    cron: str | None = None
    timezone: str = "UTC"
    expires_at: datetime | None = None
    missed: Literal["catch_up", "skip"] = "skip"
    # With "skip", a run later than this when a scheduler gets to it was missed and is skipped.
    grace_seconds: int = Field(default=300, ge=0)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r}; use an IANA name like 'Europe/Berlin'") from None
        return name

    @field_validator("cron")
    @classmethod
    def _cron(cls, expression: str | None) -> str | None:
        if expression is not None and not croniter.is_valid(expression):
            raise ValueError(f"not a valid cron expression: {expression!r} (e.g. '0 9 * * MON')")
        return expression

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.at is None) == (self.cron is None):
            raise ValueError("give exactly one of 'at' (a time) or 'cron' (with 'timezone')")
        for name in ("at", "expires_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=ZoneInfo(self.timezone)))
        return self

    def due_times(self, after: float, until: float) -> list[float]:
        """Epoch seconds of the due runs in (after, until], none past the expiry."""
        end = until if self.expires_at is None else min(until, self.expires_at.timestamp())
        if self.at is not None:
            at = self.at.timestamp()
            return [at] if after < at <= end else []
        zone = ZoneInfo(self.timezone)
        it = croniter(str(self.cron), datetime.fromtimestamp(after, zone))
        out: list[float] = []
        while True:
            nxt = float(it.get_next(float))
            if nxt > end:
                return out
            out.append(nxt)
            if len(out) > 10_000:  # a cron every minute for a week; more means a bad expiry
                raise InvalidInputError("schedule", "more than 10000 runs due at once")

    def next_due(self, after: float) -> float | None:
        horizon = after + timedelta(days=366 * 5).total_seconds()
        if self.at is not None:
            times = self.due_times(after, horizon)
            return times[0] if times else None
        zone = ZoneInfo(self.timezone)
        nxt = float(croniter(str(self.cron), datetime.fromtimestamp(after, zone)).get_next(float))
        if self.expires_at is not None and nxt > self.expires_at.timestamp():
            return None
        return nxt


class CampaignSpec(BaseModel):
    model_config = _Strict
    tenant: str
    id: str
    description: str = ""
    audience: Audience = Field(default_factory=Audience)
    variants: list[Variant] = Field(min_length=1, max_length=20)
    channel: Literal["inbox", "webhook"] = "inbox"
    lane: Literal["marketing", "transactional"] = "marketing"
    # The pushes' topic: users who refused it (or the channel) are not picked for marketing.
    topic: str = ""
    selection: Selection = Field(default_factory=Selection)
    holdout_percent: float = Field(default=10.0, ge=0, lt=100)
    frequency_cap: FrequencyCap | None = None
    quiet_hours: QuietHours | None = None
    schedule: Schedule | None = None
    conversion_event: str = "purchase"
    conversion_window_days: int = Field(default=7, ge=1, le=90)

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return keys.validate_tenant_id(value)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return check_topic(value, may_be_empty=True)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not CAMPAIGN_ID_PATTERN.fullmatch(value):
            raise ValueError(
                f"must match {CAMPAIGN_ID_PATTERN.pattern} (lower-case letters, digits, '_', '-'), "
                f"got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CampaignSpec:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if "holdout" in names:
            raise ValueError("'holdout' is reserved for the held-out users; rename the variant")
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}")
        return self

    @property
    def template_attributes(self) -> list[str]:
        fields = {f for v in self.variants for f in template_fields(v.title) + template_fields(v.body)}
        return sorted(fields & set(SAFE_ATTRIBUTES))

    def to_json(self) -> str:
        return self.model_dump_json()


def parse_spec(text: str, where: str = "campaign") -> CampaignSpec:
    """A spec from YAML or JSON text; InvalidInputError names the first bad field and why."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise InvalidInputError(where, f"{line}not valid YAML or JSON: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(where, f"must be a mapping of fields, got {type(data).__name__}")
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or where
        problem = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            problem = "unknown field; check the spelling (see docs/campaigns.md)"
        elif first["type"] == "missing":
            problem = "is required"
        got = first.get("input")
        if first["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict | list):
            problem = f"{problem} (got {json.dumps(got, default=str)})"
        raise InvalidInputError(field, problem) from None
