"""Campaign specs, stable assignment and the lift interval: pure functions, no services."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.campaigns import assign_arms, difference_interval, parse_spec, wilson_interval
from pipeline.errors import InvalidInputError

GOOD = """
tenant: shop
id: spring-sale
audience:
  filters:
    - {feature: days_since_last_event, op: "<=", value: 14}
    - {attribute: country, op: in, value: [US, GB]}
variants:
  - {name: a, title: 'Spring sale', body: 'Deals in {country}', weight: 3}
  - {name: b, title: 'Hi', body: 'Back after {days_since_last_event} days?'}
channel: inbox
lane: marketing
selection: {rank_by: uplift, threshold: 0.01, top_k: 5000, budget: 1000}
holdout_percent: 10
frequency_cap: {per_day: 2}
quiet_hours: {start: 22, end: 8}
schedule: {cron: '0 9 * * MON', timezone: Europe/Berlin, expires_at: '2025-12-31T00:00:00', missed: catch_up}
"""


def test_a_full_spec_parses_from_yaml_and_json() -> None:
    spec = parse_spec(GOOD)
    assert spec.selection.rank_by == "uplift" and spec.template_attributes == ["country"]
    assert spec.schedule is not None and spec.schedule.expires_at is not None
    assert parse_spec(spec.to_json()) == spec


@pytest.mark.parametrize("change, field, words", [
    (("holdout_percent: 10", "holdout_percent: 120"), "holdout_percent", "less than 100"),
    (("lane: marketing", "lane: bulk"), "lane", "marketing"),
    (("channel: inbox", "chanel: inbox"), "chanel", "unknown field"),
    (("'Deals in {country}'", "'Hi {email}'"), "variants.0.body", "{email} is not allowed"),
    (("'Deals in {country}'", "'Hi {name.upper}'"), "variants.0.body", "plain name"),
    (("{attribute: country", "{attribute: email"), "audience.filters.1", "not a safe attribute"),
    (("cron: '0 9 * * MON'", "cron: 'every monday'"), "schedule.cron", "not a valid cron"),
    (("timezone: Europe/Berlin", "timezone: Mars/Base"), "schedule.timezone", "unknown time zone"),
    (("tenant: shop", "tenant: Shop!"), "tenant", "tenant id must match"),
    (("top_k: 5000", "top_k: 0"), "selection.top_k", "greater than or equal to 1"),
    (("{name: b,", "{name: a,"), "", "variant names must be unique"),
    (("lane: marketing", "lane: marketing\ntopic: Spring!"), "topic", "a topic is 1-64"),
])
def test_a_bad_spec_names_the_field_and_the_problem(change: tuple[str, str], field: str,
                                                    words: str) -> None:
    with pytest.raises(InvalidInputError) as e:
        parse_spec(GOOD.replace(*change))
    assert e.value.field.startswith(field) and words in str(e.value)


def test_a_spec_needs_a_variant_and_one_kind_of_schedule() -> None:
    with pytest.raises(InvalidInputError, match="variants: is required"):
        parse_spec("tenant: shop\nid: x\n")
    with pytest.raises(InvalidInputError, match="exactly one of 'at'"):
        parse_spec("tenant: shop\nid: x\nvariants: [{name: a, body: hi}]\n"
                   "schedule: {at: '2025-01-01T09:00:00Z', cron: '* * * * *'}\n")
    with pytest.raises(InvalidInputError, match="line 2: not valid YAML"):
        parse_spec("tenant: [shop\n")


def test_cron_due_times_follow_the_time_zone_and_stop_at_the_expiry() -> None:
    spec = parse_spec(GOOD)
    assert spec.schedule is not None
    start = 1_743_465_600.0  # 2025-04-01 00:00 UTC, a Tuesday; Berlin is on summer time
    due = spec.schedule.due_times(start, start + 14 * 86_400)
    assert [np.datetime_as_string(np.datetime64(int(d), "s")) for d in due] == [
        "2025-04-07T07:00:00", "2025-04-14T07:00:00"]


def test_holdout_and_variants_are_stable_and_follow_the_split() -> None:
    users = [f"u{i:06d}" for i in range(20_000)]
    arms = assign_arms("spring", users, 10, [("a", 3), ("b", 1)])
    again = assign_arms("spring", list(reversed(users)), 10, [("a", 3), ("b", 1)])[::-1]
    assert (arms == again).all()
    share = {k: float(np.mean(arms == k)) for k in ("holdout", "a", "b")}
    assert abs(share["holdout"] - 0.10) < 0.01
    assert abs(share["a"] - 0.675) < 0.015 and abs(share["b"] - 0.225) < 0.015
    other = assign_arms("summer", users, 10, [("a", 3), ("b", 1)])
    assert 0.5 < float(np.mean(other == arms)) < 0.7  # another campaign draws afresh
    assert assign_arms("spring", ["u000042"], 10, [("a", 3), ("b", 1)])[0] == arms[42]


def test_the_lift_interval_covers_a_known_difference_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        treated = int(rng.binomial(800, 0.12))
        control = int(rng.binomial(200, 0.08))
        lift = difference_interval("a", treated, 800, control, 200)
        covered += lift.ci_low <= 0.04 <= lift.ci_high
    assert 0.92 <= covered / 400 <= 0.985
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 50)
    assert low == pytest.approx(0.0, abs=1e-12) and 0.05 < high < 0.1
