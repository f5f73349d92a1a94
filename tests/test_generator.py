import json
import re

import numpy as np
import pandas as pd
import phonenumbers
import pytest

from pipeline.errors import InvalidInputError
from pipeline.generator import (
    EVENT_TYPES,
    GeneratedTenant,
    generate_tenant,
    read_events,
    read_profiles,
    write_tenant,
)

USERS, DAYS = 2000, 28


@pytest.fixture(scope="module")
def shop() -> GeneratedTenant:
    return generate_tenant("shop-a", users=USERS, days=DAYS, seed=1)


@pytest.fixture(scope="module")
def small() -> GeneratedTenant:
    return generate_tenant("shop-small", users=300, days=14, seed=5)


def test_same_seed_gives_identical_tenant(small):
    again = generate_tenant("shop-small", users=300, days=14, seed=5)
    pd.testing.assert_frame_equal(small.events, again.events)
    pd.testing.assert_frame_equal(small.profiles, again.profiles)
    pd.testing.assert_frame_equal(small.truth, again.truth)
    assert small.cutoff == again.cutoff


def _local_hour_histogram(data: GeneratedTenant) -> np.ndarray:
    sessions = data.events[data.events["event_type"] == "session_start"]
    zones = sessions["user_id"].map(data.profiles.set_index("user_id")["timezone"])
    hours = np.zeros(24)
    for zone, times in sessions["event_time"].groupby(zones):
        hours += np.bincount(times.dt.tz_convert(zone).dt.hour, minlength=24)
    return hours / hours.sum()


def test_two_seeds_give_different_catalogues_and_rhythms(small):
    other = generate_tenant("shop-small", users=300, days=14, seed=6)
    assert set(small.catalogue["item"]) != set(other.catalogue["item"])
    distance = np.abs(_local_hour_histogram(small) - _local_hour_histogram(other)).sum() / 2
    assert distance > 0.1
    assert not small.events["event_time"].equals(other.events["event_time"])


def test_bank_tenant_gets_a_banking_catalogue():
    bank = generate_tenant("acme-bank", users=200, days=10, seed=3)
    assert {"transfer", "card", "loan"} <= set(bank.catalogue["item"])
    bought = bank.events.loc[bank.events["event_type"] == "purchase", "item"]
    assert set(bought) <= set(bank.catalogue["item"])


def test_events_have_the_documented_shape_and_stay_in_the_window(shop):
    events = shop.events
    assert list(events.columns) == ["user_id", "event_time", "event_type", "value", "item"]
    assert str(events["event_time"].dt.tz) == "UTC"
    assert set(events["event_type"]) == set(EVENT_TYPES)
    assert events["event_time"].is_monotonic_increasing
    assert events["event_time"].min() >= shop.start
    assert events["event_time"].max() < shop.start + pd.Timedelta(days=DAYS)
    assert shop.cutoff == shop.start + pd.Timedelta(days=DAYS - shop.horizon_days)
    is_purchase = events["event_type"] == "purchase"
    assert (events.loc[is_purchase, "value"] > 0).all()
    assert events.loc[~is_purchase, "value"].isna().all()
    has_item = events["event_type"].isin(["view", "add_to_cart", "purchase"])
    assert events.loc[has_item, "item"].notna().all()
    assert events.loc[~has_item, "item"].isna().all()
    assert 100_000 <= len(events) <= 300_000


def test_high_propensity_users_do_more_and_open_more_pushes(shop):
    truth = shop.truth.set_index("user_id")
    people = truth[~truth["is_bot"]]
    top = people.index[people["propensity"] >= people["propensity"].quantile(0.8)]
    low = people.index[people["propensity"] <= people["propensity"].quantile(0.2)]
    counts = shop.events.groupby(["user_id", "event_type"]).size().unstack(fill_value=0)
    counts = counts.reindex(truth.index, fill_value=0)
    for kind in ("session_start", "view", "add_to_cart", "purchase", "push_open"):
        assert counts.loc[top, kind].mean() > 2 * counts.loc[low, kind].mean(), kind
    open_rate = counts["push_open"].sum() / counts["push_sent"].sum()
    assert 0.03 < open_rate < 0.4


def test_purchases_after_the_cutoff_are_a_realistic_minority(shop):
    events = shop.events
    after = events[(events["event_time"] > shop.cutoff) & (events["event_type"] == "purchase")]
    share = after["user_id"].nunique() / USERS
    assert 0.10 <= share <= 0.30


def test_personal_data_is_unique_per_user(shop):
    profiles = shop.profiles
    for column in ("user_id", "name", "email", "phone"):
        assert profiles[column].is_unique, column
    # Grep-unique too: no one's e-mail or phone appears in another user's row.
    rows = profiles.astype(str).agg(" | ".join, axis=1)
    for column in ("email", "phone"):
        for position in np.random.default_rng(0).choice(len(profiles), 150, replace=False):
            value = profiles[column].iloc[position]
            assert rows.str.contains(value, regex=False).sum() == 1, value


def test_notes_mention_the_users_own_email_or_phone(shop):
    profiles = shop.profiles
    written = profiles[profiles["notes"] != ""]
    assert 0.6 < len(written) / len(profiles) < 0.9
    mentions = [
        email in note or phone in note
        for email, phone, note in zip(
            written["email"], written["phone"], written["notes"], strict=True
        )
    ]
    assert all(mentions)


def test_names_and_phones_cover_english_and_chinese_formats(shop):
    profiles = shop.profiles
    chinese = profiles["country"] == "CN"
    assert 0.1 < chinese.mean() < 0.7
    hanzi = re.compile(r"[\u4e00-\u9fff]")
    assert profiles.loc[chinese, "name"].str.contains(hanzi).any()
    assert (~profiles.loc[chinese, "name"].str.contains(hanzi)).any()
    assert profiles.loc[chinese, "notes"].str.contains(hanzi).any()
    assert not profiles.loc[~chinese, "name"].str.contains(hanzi).any()
    patterns = {
        r"^\+1 \d{3}-\d{3}-\d{4}$",
        r"^\(\d{3}\) \d{3}-\d{4}$",
        r"^\+86 1\d{2} \d{4} \d{4}$",
        r"^1\d{10}$",
    }
    for pattern in patterns:
        assert profiles["phone"].str.match(pattern).any(), pattern
    assert profiles["phone"].str.match("|".join(patterns)).all()


def test_phone_numbers_are_valid_numbers_for_their_country(shop):
    for phone, country in zip(shop.profiles["phone"], shop.profiles["country"], strict=True):
        region = "CN" if country == "CN" else "US"
        parsed = phonenumbers.parse(phone, region)
        assert phonenumbers.is_valid_number(parsed), phone


def test_profiles_have_iana_zones_ages_and_signups_before_the_start(shop):
    profiles = shop.profiles
    assert profiles["timezone"].nunique() >= 5
    for zone in profiles["timezone"].unique():
        pd.Timestamp("2025-01-01", tz=zone)
    assert profiles["age"].between(18, 90).all()
    assert (profiles["signup_at"] < shop.start).all()


def test_about_two_percent_of_users_are_fast_regular_round_the_clock_bots(shop):
    truth = shop.truth.set_index("user_id")
    assert truth["is_bot"].mean() == pytest.approx(0.02, abs=0.005)
    views = shop.events[shop.events["event_type"] == "view"]
    per_user = views.groupby("user_id").size().reindex(truth.index, fill_value=0)
    bots = truth.index[truth["is_bot"]]
    assert per_user[bots].median() > 10 * per_user[~truth["is_bot"]].median()
    bot_views = views[views["user_id"].isin(bots)].sort_values(["user_id", "event_time"])
    gaps = bot_views.groupby("user_id")["event_time"].diff().dt.total_seconds().dropna()
    assert gaps.median() < 6
    assert bot_views["event_time"].dt.hour.nunique() == 24
    purchases = shop.events[shop.events["event_type"] == "purchase"].groupby("user_id").size()
    assert purchases.reindex(bots, fill_value=0).mean() < 1


def test_traffic_bursts_pack_hundreds_of_events_into_minutes(shop):
    burst_users = shop.truth.loc[shop.truth["has_burst"], "user_id"]
    assert len(burst_users) >= 1
    assert not shop.truth.loc[shop.truth["has_burst"], "is_bot"].any()
    events = shop.events[shop.events["user_id"].isin(burst_users)]
    per_minute = events.groupby(["user_id", events["event_time"].dt.floor("min")]).size()
    assert per_minute.groupby(level="user_id").max().min() >= 50


def test_generator_rejects_impossible_arguments():
    with pytest.raises(InvalidInputError, match="days"):
        generate_tenant("t", users=10, days=7, seed=0, horizon_days=7)
    with pytest.raises(InvalidInputError, match="users"):
        generate_tenant("t", users=0, days=10, seed=0)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_write_then_read_gives_back_events_and_profiles(small, tmp_path, fmt):
    paths = write_tenant(small, tmp_path / "out", fmt=fmt)
    assert set(paths) == {"events", "profiles", "truth", "meta"}
    assert paths["events"].name == f"events.{fmt}"

    events = read_events(paths["events"])
    pd.testing.assert_frame_equal(events, small.events, check_dtype=False)
    assert str(events["event_time"].dtype) == "datetime64[ns, UTC]"

    profiles = read_profiles(paths["profiles"])
    expected = small.profiles.assign(notes=small.profiles["notes"].replace("", np.nan))
    got = profiles.assign(notes=profiles["notes"].replace("", np.nan))
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    # Numbers that look like integers stay text.
    assert profiles["phone"].str.match(r"^1\d{10}$").any()

    meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    assert meta["tenant_id"] == "shop-small"
    assert meta["seed"] == 5
    assert pd.Timestamp(meta["cutoff"]) == small.cutoff
    assert meta["horizon_days"] == small.horizon_days
    assert meta["events"] == len(small.events)


def test_write_tenant_rejects_an_unknown_format(small, tmp_path):
    with pytest.raises(InvalidInputError, match="fmt"):
        write_tenant(small, tmp_path, fmt="xlsx")


@pytest.mark.parametrize("sep", [";", "\t"])
def test_read_events_sniffs_the_separator(tmp_path, sep):
    path = tmp_path / "events.csv"
    path.write_text(
        sep.join(["user_id", "event_time", "event_type", "value"])
        + "\n"
        + sep.join(["007", "2025-03-01T10:00:00Z", "purchase", "12.5"])
        + "\n"
        + sep.join(["008", "2025-03-01 12:00:00+01:00", "view", ""])
        + "\n"
    )
    events = read_events(path)
    assert list(events["user_id"]) == ["007", "008"]
    assert list(events["event_time"]) == [
        pd.Timestamp("2025-03-01 10:00", tz="UTC"),
        pd.Timestamp("2025-03-01 11:00", tz="UTC"),
    ]
    assert events["value"].iloc[0] == 12.5 and np.isnan(events["value"].iloc[1])


def test_read_events_without_value_column_adds_missing_values(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,event_time,event_type\nu1,2025-03-01,view\n")
    events = read_events(path)
    assert events["value"].isna().all()
    assert events["event_time"].iloc[0] == pd.Timestamp("2025-03-01", tz="UTC")


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("user_id,event_type\nu1,view\n", "event_time", "missing"),
        (
            "user_id,event_time,event_type\nu1,2025-03-01,view\nu2,yesterday-ish,view\n",
            "event_time",
            "row 2",
        ),
        ("user_id,event_time,event_type,value\nu1,2025-03-01,purchase,ten\n", "value", "ten"),
        ("user_id,event_time,event_type\n,2025-03-01,view\n", "user_id", "row 1"),
        ("", "path", "empty"),
        ("user_id,event_time,event_type\n", "path", "no rows"),
    ],
)
def test_read_events_names_the_problem(tmp_path, text, field, words):
    path = tmp_path / "events.csv"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as caught:
        read_events(path)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_read_events_rejects_unknown_extensions_and_bad_parquet(tmp_path):
    path = tmp_path / "events.xlsx"
    path.write_text("user_id,event_time,event_type\n")
    with pytest.raises(InvalidInputError, match="unsupported file type '.xlsx'"):
        read_events(path)
    broken = tmp_path / "events.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(InvalidInputError, match="Parquet"):
        read_events(broken)


def test_read_profiles_requires_user_id(tmp_path):
    path = tmp_path / "profiles.csv"
    path.write_text("name,email\nAda,ada@example.com\n")
    with pytest.raises(InvalidInputError) as caught:
        read_profiles(path)
    assert caught.value.field == "user_id"
