"""Vectorised operators on one column: pseudonymize, mask, generalize."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from pipeline.errors import InvalidInputError

__all__ = [
    "canonical_value",
    "generalize_age",
    "generalize_location",
    "location_region",
    "mask",
    "pseudonym",
    "pseudonymize",
]

_PSEUDONYM_HEX_CHARS = 16
_NON_DIGITS = re.compile(r"\D")
_CN_MOBILE = re.compile(r"1[3-9]\d{9}")
_SPACES = re.compile(r"\s+")

_REGIONS: dict[str, str] = {
    **dict.fromkeys(
        [
            "new york",
            "san francisco",
            "los angeles",
            "chicago",
            "seattle",
            "boston",
            "austin",
            "houston",
            "miami",
            "denver",
            "atlanta",
            "san jose",
            "washington",
            "portland",
        ],
        "United States",
    ),
    **dict.fromkeys(["toronto", "vancouver", "montreal"], "Canada"),
    **dict.fromkeys(["london", "manchester", "edinburgh"], "United Kingdom"),
    **dict.fromkeys(["paris", "lyon"], "France"),
    **dict.fromkeys(["berlin", "munich", "hamburg"], "Germany"),
    **dict.fromkeys(
        [
            "beijing",
            "shanghai",
            "guangzhou",
            "shenzhen",
            "hangzhou",
            "chengdu",
            "wuhan",
            "nanjing",
            "xi'an",
            "xian",
            "tianjin",
            "chongqing",
            "suzhou",
            "北京",
            "上海",
            "广州",
            "深圳",
            "杭州",
            "成都",
            "武汉",
            "南京",
            "西安",
            "天津",
            "重庆",
            "苏州",
        ],
        "China",
    ),
    **dict.fromkeys(["hong kong", "香港"], "Hong Kong"),
    **dict.fromkeys(["taipei", "台北"], "Taiwan"),
    **dict.fromkeys(["tokyo", "osaka"], "Japan"),
    **dict.fromkeys(["seoul"], "South Korea"),
    **dict.fromkeys(["singapore"], "Singapore"),
    **dict.fromkeys(["sydney", "melbourne"], "Australia"),
    **dict.fromkeys(["bangalore", "bengaluru", "mumbai", "delhi", "new delhi"], "India"),
}


def check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise InvalidInputError("secret", "must be non-empty bytes: the tenant's pseudonym secret")


def canonical_value(value: str, entity_type: str) -> str:
    """The form that is hashed, so one e-mail or phone written two ways gets one pseudonym."""
    value = value.strip()
    if entity_type == "EMAIL_ADDRESS":
        return value.casefold()
    if entity_type == "PHONE_NUMBER":
        digits = _NON_DIGITS.sub("", value)
        if value.startswith("+"):
            return "+" + digits
        if _CN_MOBILE.fullmatch(digits):
            return "+86" + digits
        if len(digits) == 13 and digits.startswith("86") and _CN_MOBILE.fullmatch(digits[2:]):
            return "+" + digits
        if len(digits) == 10:
            return "+1" + digits
        return digits
    return _SPACES.sub(" ", value).casefold()


def pseudonym(value: str, secret: bytes, entity_type: str) -> str:
    message = f"{entity_type}\x1f{canonical_value(value, entity_type)}".encode()
    digest = hmac.digest(secret, message, "sha256").hex()
    return f"{entity_type}_{digest[:_PSEUDONYM_HEX_CHARS]}"


def _map_distinct(values: pd.Series, func: Callable[[str], str]) -> pd.Series:
    """Apply `func` once per distinct non-empty value; missing and empty values stay missing."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = [func(str(u)) if str(u).strip() else None for u in uniques]
    lookup = np.array([*mapped, None], dtype=object)
    out = lookup[codes]  # code -1 (missing) picks the trailing None
    return pd.Series(out, index=values.index, name=values.name, dtype="str")


def pseudonymize(values: pd.Series, secret: bytes, entity_type: str) -> pd.Series:
    """HMAC-SHA256 pseudonyms like "EMAIL_ADDRESS_3fa9c2e1b0d4a7f1", keyed by the tenant secret."""
    check_secret(secret)
    key = bytes(secret)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    distinct = pd.Series(uniques, dtype="str").str.strip()
    if entity_type == "EMAIL_ADDRESS":
        canonical = distinct.str.casefold().tolist()
    else:
        canonical = [canonical_value(v, entity_type) for v in distinct.tolist()]
    prefix = f"{entity_type}\x1f"
    label = f"{entity_type}_"
    # One hmac.digest per distinct value: repeated values cost nothing more.
    mapped = [
        label + hmac.digest(key, (prefix + v).encode(), "sha256").hex()[:_PSEUDONYM_HEX_CHARS]
        if v
        else None
        for v in canonical
    ]
    lookup = np.array([*mapped, None], dtype=object)
    return pd.Series(lookup[codes], index=values.index, name=values.name, dtype="str")


def mask(values: pd.Series) -> pd.Series:
    return _map_distinct(values, lambda _: "****")


def location_region(value: str) -> str:
    return _REGIONS.get(_SPACES.sub(" ", value.strip()).casefold(), "<LOCATION>")


def generalize_location(values: pd.Series) -> pd.Series:
    """A city becomes its country when the built-in map knows it, else "<LOCATION>"."""
    return _map_distinct(values, location_region)


def generalize_age(values: pd.Series) -> pd.Series:
    """Ages become ten-year bands ("30-39"); 90 and over is "90+"; invalid ages become missing."""
    ages = pd.to_numeric(values, errors="coerce")
    ages = ages.where((ages >= 0) & (ages < 150))
    lower = (ages // 10 * 10).clip(upper=90)
    labels = {b: (f"{int(b)}-{int(b) + 9}" if b < 90 else "90+") for b in lower.dropna().unique()}
    return pd.Series(lower.map(labels), index=values.index, name=values.name, dtype="str")
