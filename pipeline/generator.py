"""Synthetic tenants: realistic behaviour events, profiles full of personal data, hidden truth."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InvalidInputError

__all__ = [
    "EVENT_TYPES",
    "GeneratedTenant",
    "generate_tenant",
    "write_tenant",
    "read_events",
    "read_profiles",
]

EVENT_TYPES: tuple[str, ...] = (
    "session_start",
    "view",
    "add_to_cart",
    "purchase",
    "push_sent",
    "push_open",
)
_SESSION, _VIEW, _CART, _PURCHASE, _PUSH_SENT, _PUSH_OPEN = range(len(EVENT_TYPES))

_NS_PER_S = 1_000_000_000
_NS_PER_HOUR = 3600 * _NS_PER_S
_NS_PER_DAY = 24 * _NS_PER_HOUR
_DEFAULT_START = pd.Timestamp("2025-03-03", tz="UTC")  # spans both US and EU DST changes
_BOT_SHARE = 0.02


@dataclass(frozen=True, eq=False)
class GeneratedTenant:
    """A tenant's synthetic data; `truth` also holds has_burst and preferred_hour (local)."""

    tenant_id: str
    events: pd.DataFrame
    profiles: pd.DataFrame
    truth: pd.DataFrame
    cutoff: pd.Timestamp
    horizon_days: int
    seed: int | None = None
    start: pd.Timestamp | None = None
    days: int | None = None
    catalogue: pd.DataFrame = field(default_factory=pd.DataFrame)


# --- catalogues -------------------------------------------------------------------------------

_SHOP_CATALOGUE: dict[str, tuple[float, tuple[str, ...]]] = {
    "electronics": (80.0, ("wireless earbuds", "usb-c charger", "smart watch", "bluetooth speaker",
                           "phone case", "e-reader", "action camera", "gaming mouse", "power bank",
                           "noise cancelling headphones", "mechanical keyboard", "webcam")),
    "fashion": (45.0, ("denim jacket", "running shoes", "linen shirt", "wool scarf", "sneakers",
                       "leather belt", "rain coat", "summer dress", "chinos", "hoodie",
                       "sunglasses", "backpack")),
    "home": (35.0, ("scented candle", "throw blanket", "coffee grinder", "chef knife",
                    "cast iron pan", "desk lamp", "plant pot", "bath towels", "french press",
                    "storage baskets", "wall clock", "bed sheets")),
    "beauty": (22.0, ("face serum", "lip balm", "sunscreen spf50", "hair oil", "night cream",
                      "perfume", "nail polish set", "body lotion", "clay mask", "shampoo bar")),
    "sports": (40.0, ("yoga mat", "resistance bands", "water bottle", "cycling gloves",
                      "tennis balls", "dumbbell set", "jump rope", "foam roller", "swim goggles",
                      "trail socks")),
    "grocery": (9.0, ("green tea", "dark chocolate", "olive oil", "oat milk", "coffee beans",
                      "jasmine rice", "honey jar", "granola", "sparkling water", "pasta pack",
                      "spice mix", "dried mango")),
    "books": (16.0, ("mystery novel", "cookbook", "travel guide", "sci-fi paperback",
                     "children's picture book", "biography", "poetry collection", "comic volume",
                     "language course", "history atlas")),
    "toys": (25.0, ("building blocks", "puzzle 1000", "plush bear", "rc car", "board game",
                    "art kit", "kite", "doll house", "train set", "card game")),
}

_BANK_CATALOGUE: dict[str, tuple[float, tuple[str, ...]]] = {
    "payments": (250.0, ("transfer", "bill payment", "standing order", "fx exchange",
                         "international transfer", "top-up")),
    "cards": (60.0, ("card", "credit card upgrade", "virtual card", "card replacement",
                     "travel card")),
    "lending": (4000.0, ("loan", "mortgage", "overdraft", "car loan", "student loan")),
    "wealth": (900.0, ("savings account", "investment fund", "pension plan", "fixed deposit",
                       "insurance", "gold savings")),
}


def _catalogue(tenant_id: str, rng: np.random.Generator) -> pd.DataFrame:
    is_bank = "bank" in tenant_id.lower()
    pool = _BANK_CATALOGUE if is_bank else _SHOP_CATALOGUE
    categories = sorted(pool)
    n_categories = len(categories) if is_bank else int(rng.integers(3, 6))
    chosen = rng.choice(categories, size=n_categories, replace=False)
    rows: list[tuple[str, str, float]] = []
    for category in chosen:
        base_price, names = pool[str(category)]
        n_items = len(names) if is_bank else int(rng.integers(5, len(names) + 1))
        picked = rng.choice(len(names), size=n_items, replace=False)
        prices = base_price * rng.lognormal(0.0, 0.45, size=n_items)
        rows.extend(
            (names[i], str(category), float(np.round(price, 2)))
            for i, price in zip(picked, prices, strict=True)
        )
    order = rng.permutation(len(rows))  # popularity rank, from most to least viewed
    return pd.DataFrame([rows[i] for i in order], columns=["item", "category", "price"])


# --- people -----------------------------------------------------------------------------------

# No first name ends another (Anna/Hanna), so a grep for one person never finds another.
_EN_FIRST = (
    "James", "Mary", "Robert", "Patricia", "Michael", "Jennifer", "William", "Linda", "David",
    "Elizabeth", "Richard", "Barbara", "Joseph", "Susan", "Thomas", "Jessica", "Charles",
    "Sarah", "Christopher", "Karen", "Daniel", "Nancy", "Matthew", "Lisa", "Anthony", "Betty",
    "Mark", "Margaret", "Donald", "Sandra", "Steven", "Ashley", "Paul", "Kimberly", "Andrew",
    "Emily", "Joshua", "Donna", "Kenneth", "Michelle", "Kevin", "Carol", "Brian", "Amanda",
    "George", "Melissa", "Timothy", "Deborah", "Ronald", "Stephanie", "Edward", "Rebecca",
    "Jason", "Sharon", "Jeffrey", "Laura", "Ryan", "Cynthia", "Jacob", "Olivia", "Oliver",
    "Amelia", "Harry", "Isla", "Noah", "Sophie", "Liam", "Grace", "Ethan", "Chloe",
)
_EN_LAST = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Taylor", "Moore",
    "Jackson", "Martin", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis",
    "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen",
    "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell",
    "Mitchell", "Carter", "Roberts", "Evans", "Turner", "Phillips", "Parker", "Collins",
    "Edwards", "Stewart", "Morris", "Murphy", "Cook", "Rogers", "Morgan", "Cooper",
)
_EN_MIDDLE = tuple("ABCDEFGHJKLMNPRSTW")
_CN_SURNAMES = (
    ("Wang", "王"), ("Li", "李"), ("Zhang", "张"), ("Liu", "刘"), ("Chen", "陈"), ("Yang", "杨"),
    ("Huang", "黄"), ("Zhao", "赵"), ("Wu", "吴"), ("Zhou", "周"), ("Xu", "徐"), ("Sun", "孙"),
    ("Ma", "马"), ("Zhu", "朱"), ("Hu", "胡"), ("Guo", "郭"), ("He", "何"), ("Gao", "高"),
    ("Lin", "林"), ("Luo", "罗"), ("Zheng", "郑"), ("Liang", "梁"), ("Xie", "谢"), ("Song", "宋"),
    ("Tang", "唐"), ("Han", "韩"), ("Feng", "冯"), ("Deng", "邓"), ("Cao", "曹"), ("Peng", "彭"),
    ("Zeng", "曾"), ("Xiao", "肖"), ("Tian", "田"), ("Dong", "董"), ("Pan", "潘"), ("Yuan", "袁"),
    ("Cai", "蔡"), ("Jiang", "蒋"), ("Yu", "余"), ("Du", "杜"),
)
# Every given name is unique in pinyin and in Hanzi, and none is the start of another.
_CN_GIVEN = (
    ("Wei", "伟"), ("Fang", "芳"), ("Na", "娜"), ("Min", "敏"), ("Jing", "静"), ("Lei", "磊"),
    ("Qiang", "强"), ("Jianguo", "建国"), ("Xiaoming", "晓明"), ("Haoran", "浩然"),
    ("Yuxuan", "宇轩"), ("Zihan", "子涵"), ("Xinyi", "欣怡"), ("Jiahao", "嘉豪"),
    ("Yuting", "雨婷"), ("Zhiqiang", "志强"), ("Lili", "丽丽"), ("Hongmei", "红梅"),
    ("Junjie", "俊杰"), ("Mingyu", "明宇"), ("Shuang", "爽"), ("Tingting", "婷婷"),
    ("Wenjing", "文静"), ("Xiaolong", "小龙"), ("Yifan", "一帆"), ("Zhihao", "志豪"),
    ("Ruoxi", "若曦"), ("Chenxi", "晨曦"), ("Kaiwen", "凯文"), ("Siyu", "思雨"),
    ("Mengqi", "梦琪"), ("Haoyu", "浩宇"), ("Jiaqi", "佳琪"), ("Yutong", "雨桐"),
    ("Zixuan", "梓萱"), ("Bowen", "博文"), ("Xinran", "欣然"), ("Yuhang", "宇航"),
    ("Jiayi", "佳怡"), ("Tianyu", "天宇"), ("Xiaoyu", "晓宇"), ("Shuyi", "舒怡"), ("Qian", "倩"),
    ("Hui", "慧"), ("Tao", "涛"), ("Jun", "军"), ("Yong", "勇"), ("Yan", "燕"), ("Ping", "平"),
    ("Gang", "刚"), ("Hua", "华"), ("Bo", "波"), ("Dan", "丹"), ("Xin", "鑫"), ("Chao", "超"),
    ("Ying", "颖"), ("Rui", "睿"),
)

# (city, country, IANA zone, area codes); NANP numbers for the West, mainland mobiles for China.
_WEST_PLACES = (
    ("New York", "US", "America/New_York", (212, 646, 917, 718), 0.18),
    ("Boston", "US", "America/New_York", (617, 857), 0.06),
    ("Chicago", "US", "America/Chicago", (312, 773), 0.10),
    ("Austin", "US", "America/Chicago", (512, 737), 0.06),
    ("Denver", "US", "America/Denver", (303, 720), 0.05),
    ("Phoenix", "US", "America/Phoenix", (602, 480), 0.04),
    ("San Francisco", "US", "America/Los_Angeles", (415, 628), 0.10),
    ("Seattle", "US", "America/Los_Angeles", (206, 425), 0.07),
    ("Toronto", "CA", "America/Toronto", (416, 647), 0.07),
    ("Vancouver", "CA", "America/Vancouver", (604, 778), 0.04),
    ("London", "GB", "Europe/London", (212, 415), 0.12),
    ("Berlin", "DE", "Europe/Berlin", (646, 917), 0.06),
    ("Sydney", "AU", "Australia/Sydney", (415, 206), 0.05),
)
_CN_PLACES = (
    ("Shanghai", "CN", "Asia/Shanghai", 0.30),
    ("Beijing", "CN", "Asia/Shanghai", 0.25),
    ("Shenzhen", "CN", "Asia/Shanghai", 0.15),
    ("Guangzhou", "CN", "Asia/Shanghai", 0.12),
    ("Hangzhou", "CN", "Asia/Shanghai", 0.10),
    ("Chengdu", "CN", "Asia/Shanghai", 0.08),
)
_CN_MOBILE_PREFIXES = (
    *range(130, 140), 150, 151, 152, 153, 155, 156, 157, 158, 159, *range(180, 190),
)
# Exchanges 200-999 without N11 service codes or the fictional 555.
_NANP_EXCHANGES = tuple(e for e in range(200, 1000) if e % 100 != 11 and e != 555)
_WEST_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me")
_CN_DOMAINS = ("qq.com", "163.com", "126.com", "sina.com", "foxmail.com")

_EN_NOTES = (
    "Customer asked to be contacted at {email} instead of by phone.",
    "Called from {phone} about a late delivery; follow up by email at {email}.",
    "Prefers text messages to {phone} after 6pm.",
    "Changed e-mail address to {email} last month.",
    "VIP - escalate any call from {phone} to the team lead.",
    "Unsubscribed from the newsletter but {email} still receives receipts.",
    "Left a voicemail, please call back on {phone}.",
)
_CN_NOTES = (
    "客户要求通过手机 {phone} 联系，不要发邮件。",
    "已将账单发送到 {email}，请客户核对。",
    "用户反馈：登录邮箱 {email}，联系电话 {phone}。",
    "客户来电 {phone} 询问退款进度。",
    "请勿在晚上十点后拨打 {phone}。",
)


def _unique_ints(rng: np.random.Generator, n: int, space: int) -> np.ndarray:
    if n > space:
        raise InvalidInputError("users", f"{n} users exceed the {space} unique values available")
    return rng.choice(space, size=n, replace=False)


def _unique_combinations(
    rng: np.random.Generator, sizes: tuple[int, ...], n: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """n distinct draws from the product of parts, as one index per part plus a repeat round.

    Only beyond the product's size do two draws share all parts; their round then differs.
    """
    space = int(np.prod(sizes))
    if n <= space:
        flat = rng.choice(space, size=n, replace=False)
        rounds = np.zeros(n, dtype=np.int64)
    else:
        flat = np.concatenate([rng.permutation(space) for _ in range(n // space + 1)])[:n]
        rounds = np.arange(n) // space
    indices = []
    for size in reversed(sizes):
        flat, index = np.divmod(flat, size)
        indices.append(index)
    return indices[::-1], rounds


def _profiles(
    user_ids: np.ndarray, is_chinese: np.ndarray, rng: np.random.Generator, start: pd.Timestamp
) -> pd.DataFrame:
    n = len(user_ids)
    n_cn = int(is_chinese.sum())
    n_west = n - n_cn

    (first, middle, last), west_round = _unique_combinations(
        rng, (len(_EN_FIRST), len(_EN_MIDDLE), len(_EN_LAST)), n_west
    )
    (surname, given), cn_round = _unique_combinations(
        rng, (len(_CN_SURNAMES), len(_CN_GIVEN)), n_cn
    )
    use_hanzi = rng.random(n_cn) < 0.5

    names = np.empty(n, dtype=object)
    email_local = np.empty(n, dtype=object)
    for k, i in enumerate(np.flatnonzero(~is_chinese).tolist()):
        first_name, last_name = _EN_FIRST[first[k]], _EN_LAST[last[k]]
        suffix = f" {west_round[k] + 1}" if west_round[k] else ""
        names[i] = f"{first_name} {_EN_MIDDLE[middle[k]]}. {last_name}{suffix}"
        email_local[i] = f"{first_name}.{last_name}".lower()
    for k, i in enumerate(np.flatnonzero(is_chinese).tolist()):
        (family_py, family_hz), (given_py, given_hz) = _CN_SURNAMES[surname[k]], _CN_GIVEN[given[k]]
        suffix = f" {cn_round[k] + 1}" if cn_round[k] else ""
        names[i] = (
            f"{family_hz}{given_hz}{suffix}" if use_hanzi[k] else f"{given_py} {family_py}{suffix}"
        )
        email_local[i] = f"{given_py}.{family_py}".lower()

    # A unique number in every address keeps e-mails unique whatever the names.
    email_numbers = _unique_ints(rng, n, max(100_000, 20 * n)) + 10
    domains = np.where(
        is_chinese, rng.choice(_CN_DOMAINS, size=n), rng.choice(_WEST_DOMAINS, size=n)
    )
    emails = [
        f"{local}{num}@{dom}"
        for local, num, dom in zip(email_local, email_numbers.tolist(), domains, strict=True)
    ]

    west_weights = np.array([p[4] for p in _WEST_PLACES])
    west_place = rng.choice(len(_WEST_PLACES), size=n, p=west_weights / west_weights.sum())
    cn_weights = np.array([p[3] for p in _CN_PLACES])
    cn_place = rng.choice(len(_CN_PLACES), size=n, p=cn_weights / cn_weights.sum())

    us_numbers = _unique_ints(rng, n, 4 * len(_NANP_EXCHANGES) * 10_000)
    area_slot, rest = np.divmod(us_numbers, len(_NANP_EXCHANGES) * 10_000)
    exchange_index, line = np.divmod(rest, 10_000)
    cn_numbers = _unique_ints(rng, n, len(_CN_MOBILE_PREFIXES) * 10**8)
    cn_prefix, cn_rest = np.divmod(cn_numbers, 10**8)
    international_style = rng.random(n) < 0.5

    cities, countries, zones, phones = [], [], [], []
    for i in range(n):
        if is_chinese[i]:
            city, country, zone, _ = _CN_PLACES[cn_place[i]]
            prefix = _CN_MOBILE_PREFIXES[cn_prefix[i]]
            digits = f"{cn_rest[i]:08d}"
            phone = (
                f"+86 {prefix} {digits[:4]} {digits[4:]}"
                if international_style[i]
                else f"{prefix}{digits}"
            )
        else:
            city, country, zone, areas, _ = _WEST_PLACES[west_place[i]]
            area = areas[area_slot[i] % len(areas)]
            number = f"{_NANP_EXCHANGES[exchange_index[i]]}-{line[i]:04d}"
            phone = f"+1 {area}-{number}" if international_style[i] else f"({area}) {number}"
        cities.append(city)
        countries.append(country)
        zones.append(zone)
        phones.append(phone)

    note_kind = rng.random(n)
    en_template = rng.integers(0, len(_EN_NOTES), size=n)
    cn_template = rng.integers(0, len(_CN_NOTES), size=n)
    notes = []
    for i in range(n):
        if note_kind[i] < 0.25:
            notes.append("")
            continue
        chinese_note = is_chinese[i] and note_kind[i] < 0.7
        template = _CN_NOTES[cn_template[i]] if chinese_note else _EN_NOTES[en_template[i]]
        notes.append(template.format(email=emails[i], phone=phones[i]))

    signup_offsets = rng.integers(1, 730 * 24 * 3600, size=n) * _NS_PER_S
    return pd.DataFrame(
        {
            "user_id": pd.array(user_ids, dtype="str"),
            "name": pd.array(names, dtype="str"),
            "email": pd.array(emails, dtype="str"),
            "phone": pd.array(phones, dtype="str"),
            "city": pd.array(cities, dtype="str"),
            "country": pd.array(countries, dtype="str"),
            "timezone": pd.array(zones, dtype="str"),
            "age": np.clip(np.round(rng.gamma(6.0, 6.5, size=n)), 18, 90).astype(np.int64),
            "signup_at": _to_utc(start.value - signup_offsets).floor("s"),
            "notes": pd.array(notes, dtype="str"),
        }
    )


# --- behaviour --------------------------------------------------------------------------------


def _to_utc(ns: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.asarray(ns, dtype="datetime64[ns]")).tz_localize("UTC")


def _hour_profile(rng: np.random.Generator) -> np.ndarray:
    """A tenant's daily rhythm: a quiet night and two or three peaks chosen by the seed."""
    hours = np.arange(24)
    peaks = [rng.uniform(7.0, 9.5), rng.uniform(11.5, 14.0), rng.uniform(18.0, 22.5)]
    weights = rng.dirichlet([2.0, 2.0, 3.0]) + 0.05
    profile = np.full(24, 0.02)
    for peak, weight in zip(peaks, weights, strict=True):
        distance = np.minimum(np.abs(hours - peak), 24 - np.abs(hours - peak))
        profile += weight * np.exp(-0.5 * (distance / rng.uniform(1.0, 2.2)) ** 2)
    return profile / profile.sum()


def _local_to_utc_ns(local_ns: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """Wall-clock times (ns, naive) in each row's zone to UTC ns; times that do not exist -> -1."""
    out = np.full(len(local_ns), -1, dtype=np.int64)
    for zone in np.unique(zones):
        rows = np.flatnonzero(zones == zone)
        naive = pd.DatetimeIndex(local_ns[rows].astype("datetime64[ns]"))
        aware = naive.tz_localize(str(zone), ambiguous="NaT", nonexistent="NaT")
        utc = aware.tz_convert("UTC").as_unit("ns")
        ok = ~utc.isna()
        out[rows[ok]] = utc.asi8[ok]
    return out


def _segment_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each segment of the given lengths."""
    total = np.cumsum(values)
    starts = np.cumsum(counts) - counts
    before = np.where(starts > 0, total[np.maximum(starts - 1, 0)], 0.0)
    return total - np.repeat(before, counts)


def generate_tenant(
    tenant_id: str,
    *,
    users: int,
    days: int,
    seed: int,
    start: pd.Timestamp | None = None,
    horizon_days: int = 7,
) -> GeneratedTenant:
    """Generate a tenant's users, events and hidden truth; the same seed gives the same data."""
    if not tenant_id:
        raise InvalidInputError("tenant_id", "must be non-empty")
    if users < 1:
        raise InvalidInputError("users", f"must be at least 1, got {users}")
    if horizon_days < 1:
        raise InvalidInputError("horizon_days", f"must be at least 1, got {horizon_days}")
    if days <= horizon_days:
        raise InvalidInputError(
            "days", f"must exceed horizon_days ({horizon_days}) to leave history, got {days}"
        )
    start = _DEFAULT_START if start is None else pd.Timestamp(start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    start = start.as_unit("ns")
    start_ns = int(start.value)
    end_ns = start_ns + days * _NS_PER_DAY

    rng = np.random.default_rng(seed)
    catalogue = _catalogue(tenant_id, rng)
    is_bank = "bank" in tenant_id.lower()
    hour_profile = _hour_profile(rng)
    weekday_weights = rng.uniform(0.6, 1.4, size=7)
    activity = float(rng.uniform(0.75, 1.3))
    cn_share = float(rng.uniform(0.2, 0.6))
    popularity = 1.0 / np.arange(1, len(catalogue) + 1) ** rng.uniform(0.6, 1.1)
    popularity /= popularity.sum()
    prices = catalogue["price"].to_numpy()

    user_ids = np.array([f"u{i:06d}" for i in range(users)], dtype=object)
    is_chinese = rng.random(users) < cn_share
    profiles = _profiles(user_ids, is_chinese, rng, start)
    zones = profiles["timezone"].to_numpy(dtype=object)

    propensity = rng.beta(1.3, 4.5, size=users)
    n_bots = int(round(users * _BOT_SHARE))
    is_bot = np.zeros(users, dtype=bool)
    is_bot[rng.choice(users, size=n_bots, replace=False)] = True
    propensity[is_bot] = rng.uniform(0.0, 0.03, size=n_bots)
    # Activity that is independent of propensity keeps the problem from being trivially easy.
    liveliness = rng.lognormal(0.0, 0.5, size=users)
    preferred_hour = rng.choice(24, size=users, p=hour_profile)

    # Organic sessions, placed in each user's local day and hour, then moved to UTC.
    session_rate = activity * liveliness * (0.05 + 1.5 * propensity)
    n_sessions = rng.poisson(session_rate * (days + 2))
    n_sessions[is_bot] = 0
    s_user = np.repeat(np.arange(users), n_sessions)
    day_grid = np.arange(-1, days + 1)
    start_midnight_ns = int(start.normalize().value)
    day_weights = weekday_weights[(start.day_of_week + day_grid) % 7]
    s_day = rng.choice(day_grid, size=len(s_user), p=day_weights / day_weights.sum())
    own_rhythm = rng.random(len(s_user)) < 0.55
    s_hour = np.where(
        own_rhythm,
        (preferred_hour[s_user] + np.round(rng.normal(0.0, 1.0, size=len(s_user)))) % 24,
        rng.choice(24, size=len(s_user), p=hour_profile),
    )
    local_ns = (
        start_midnight_ns
        + s_day * _NS_PER_DAY
        + (s_hour * 3600 + rng.uniform(0, 3600, size=len(s_user))).astype(np.int64) * _NS_PER_S
    )
    s_time = _local_to_utc_ns(local_ns, zones[s_user])

    # Push campaigns at a tenant-chosen UTC hour; opens follow propensity and start a session.
    n_campaigns = max(1, int(round(days * rng.uniform(2.0, 5.0) / 7)))
    campaign_time = (
        start_ns
        + rng.integers(0, days, size=n_campaigns) * _NS_PER_DAY
        + int(rng.integers(0, 24)) * _NS_PER_HOUR
        + rng.integers(0, 3600, size=n_campaigns) * _NS_PER_S
    )
    reach = rng.uniform(0.3, 0.7)
    sent = rng.random((n_campaigns, users)) < reach
    p_campaign, p_user = np.nonzero(sent)
    push_time = campaign_time[p_campaign] + rng.integers(0, 600, size=len(p_user)) * _NS_PER_S
    open_rate = np.where(is_bot, 0.0, 0.02 + 0.45 * propensity)
    opened = rng.random(len(p_user)) < open_rate[p_user]
    o_user = p_user[opened]
    o_time = push_time[opened] + (rng.exponential(20 * 60, size=len(o_user)) + 5).astype(
        np.int64
    ) * _NS_PER_S
    follows = rng.random(len(o_user)) < 0.8
    s_user = np.concatenate([s_user, o_user[follows]])
    s_time = np.concatenate([s_time, o_time[follows] + 3 * _NS_PER_S])
    keep = s_time >= 0
    s_user, s_time = s_user[keep], s_time[keep]

    # Views within each session, seconds to minutes apart.
    n_views = 1 + rng.poisson(2.0 + 6.0 * propensity[s_user])
    v_session = np.repeat(np.arange(len(s_user)), n_views)
    v_user = s_user[v_session]
    gaps = rng.exponential(45.0, size=len(v_session)) + 2.0
    v_time = s_time[v_session] + (_segment_cumsum(gaps, n_views) * _NS_PER_S).astype(np.int64)
    v_item = rng.choice(len(catalogue), size=len(v_session), p=popularity)

    # Carts from views; a purchase of what was carted, mostly for high-propensity users.
    carted = rng.random(len(v_session)) < 0.01 + 0.12 * propensity[v_user]
    c_session, c_user, c_item = v_session[carted], v_user[carted], v_item[carted]
    c_time = v_time[carted] + rng.integers(3, 60, size=len(c_session)) * _NS_PER_S
    last_cart = np.flatnonzero(np.r_[c_session[1:] != c_session[:-1], len(c_session) > 0])
    basket = np.bincount(c_session, weights=prices[c_item], minlength=len(s_user))
    buys = rng.random(len(last_cart)) < 0.1 + 0.7 * propensity[c_user[last_cart]]
    b_idx = last_cart[buys]
    b_session, b_user, b_item = c_session[b_idx], c_user[b_idx], c_item[b_idx]
    b_time = c_time[b_idx] + rng.integers(30, 300, size=len(b_idx)) * _NS_PER_S
    amount_noise = rng.lognormal(0.0, 0.6, size=len(b_idx)) if is_bank else np.ones(len(b_idx))
    b_value = np.round(basket[b_session] * amount_noise, 2)

    bot_parts = _bot_events(np.flatnonzero(is_bot), rng, start_ns, days, len(catalogue))
    burst_users = rng.choice(np.flatnonzero(~is_bot), size=max(1, users // 700), replace=False)
    burst_parts = _burst_events(burst_users, rng, start_ns, days, len(catalogue))

    parts = [
        (s_user, s_time, _SESSION, None, None),
        (v_user, v_time, _VIEW, v_item, None),
        (c_user, c_time, _CART, c_item, None),
        (b_user, b_time, _PURCHASE, b_item, b_value),
        (p_user, push_time, _PUSH_SENT, None, None),
        (o_user, o_time, _PUSH_OPEN, None, None),
        *bot_parts,
        *burst_parts,
    ]
    events = _assemble(parts, user_ids, catalogue, start_ns, end_ns)

    has_burst = np.zeros(users, dtype=bool)
    has_burst[burst_users] = True
    truth = pd.DataFrame(
        {
            "user_id": pd.array(user_ids, dtype="str"),
            "propensity": propensity,
            "is_bot": is_bot,
            "has_burst": has_burst,
            "preferred_hour": preferred_hour.astype(np.int64),
        }
    )
    cutoff = start + pd.Timedelta(days=days - horizon_days)
    return GeneratedTenant(
        tenant_id=tenant_id,
        events=events,
        profiles=profiles,
        truth=truth,
        cutoff=cutoff,
        horizon_days=horizon_days,
        seed=seed,
        start=start,
        days=days,
        catalogue=catalogue,
    )


_Part = tuple[np.ndarray, np.ndarray, int, np.ndarray | None, np.ndarray | None]


def _bot_events(
    bots: np.ndarray, rng: np.random.Generator, start_ns: int, days: int, n_items: int
) -> list[_Part]:
    """Long, metronome-regular runs of views at any hour, a few carts and almost no purchases."""
    n_runs = rng.poisson(days * 0.15, size=len(bots)) + 1
    r_bot = np.repeat(bots, n_runs)
    r_start = start_ns + (rng.uniform(0, days * 86400, size=len(r_bot)) * _NS_PER_S).astype(
        np.int64
    )
    period_s = np.repeat(rng.uniform(2.0, 5.0, size=len(bots)), n_runs)
    r_views = (rng.uniform(300, 900, size=len(r_bot)) / period_s).astype(np.int64) + 1
    v_run = np.repeat(np.arange(len(r_bot)), r_views)
    steps = period_s[v_run] * rng.normal(1.0, 0.03, size=len(v_run))
    v_time = r_start[v_run] + (_segment_cumsum(steps, r_views) * _NS_PER_S).astype(np.int64)
    v_item = rng.integers(0, n_items, size=len(v_run))
    carted = rng.random(len(v_run)) < 0.003
    bought = np.flatnonzero(carted)[rng.random(int(carted.sum())) < 0.05]
    return [
        (r_bot, r_start - _NS_PER_S, _SESSION, None, None),
        (r_bot[v_run], v_time, _VIEW, v_item, None),
        (r_bot[v_run[carted]], v_time[carted] + _NS_PER_S, _CART, v_item[carted], None),
        (
            r_bot[v_run[bought]],
            v_time[bought] + 2 * _NS_PER_S,
            _PURCHASE,
            v_item[bought],
            np.full(len(bought), 1.0),
        ),
    ]


def _burst_events(
    burst_users: np.ndarray, rng: np.random.Generator, start_ns: int, days: int, n_items: int
) -> list[_Part]:
    """A normal user's client replaying hundreds of views within a couple of minutes."""
    sizes = rng.integers(150, 400, size=len(burst_users))
    window_s = rng.uniform(60, 180, size=len(burst_users))
    at = start_ns + (rng.uniform(0, days * 86400, size=len(burst_users)) * _NS_PER_S).astype(
        np.int64
    )
    b_idx = np.repeat(np.arange(len(burst_users)), sizes)
    b_time = at[b_idx] + (rng.uniform(0, 1, size=len(b_idx)) * window_s[b_idx] * _NS_PER_S).astype(
        np.int64
    )
    return [
        (burst_users, at - _NS_PER_S, _SESSION, None, None),
        (burst_users[b_idx], b_time, _VIEW, rng.integers(0, n_items, size=len(b_idx)), None),
    ]


def _assemble(
    parts: list[_Part],
    user_ids: np.ndarray,
    catalogue: pd.DataFrame,
    start_ns: int,
    end_ns: int,
) -> pd.DataFrame:
    users = np.concatenate([p[0] for p in parts]).astype(np.int64)
    times = np.concatenate([p[1] for p in parts]).astype(np.int64)
    kinds = np.concatenate([np.full(len(p[0]), p[2], dtype=np.int8) for p in parts])
    items = np.concatenate(
        [np.full(len(p[0]), -1) if p[3] is None else p[3] for p in parts]
    ).astype(np.int64)
    values = np.concatenate(
        [np.full(len(p[0]), np.nan) if p[4] is None else p[4] for p in parts]
    ).astype(np.float64)
    times = times - times % 1_000_000  # millisecond precision, as event APIs send
    keep = (times >= start_ns) & (times < end_ns)
    users, times, kinds, items, values = (
        users[keep], times[keep], kinds[keep], items[keep], values[keep]
    )
    order = np.lexsort((kinds, users, times))
    item_names = np.append(catalogue["item"].to_numpy(dtype=object), None)
    return pd.DataFrame(
        {
            "user_id": pd.array(user_ids[users[order]], dtype="str"),
            "event_time": _to_utc(times[order]),
            "event_type": pd.array(np.array(EVENT_TYPES, dtype=object)[kinds[order]], dtype="str"),
            "value": values[order],
            "item": pd.array(item_names[items[order]], dtype="str"),
        }
    )


# --- files ------------------------------------------------------------------------------------


def write_tenant(data: GeneratedTenant, out_dir: Path, fmt: str = "csv") -> dict[str, Path]:
    """Write events, profiles, truth and meta.json; returns the path of each."""
    if fmt not in ("csv", "parquet"):
        raise InvalidInputError("fmt", f"must be 'csv' or 'parquet', got {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in ("events", "profiles", "truth"):
        frame: pd.DataFrame = getattr(data, name)
        path = out_dir / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        paths[name] = path
    meta = {
        "tenant_id": data.tenant_id,
        "seed": data.seed,
        "start": None if data.start is None else data.start.isoformat(),
        "days": data.days,
        "cutoff": data.cutoff.isoformat(),
        "horizon_days": data.horizon_days,
        "users": len(data.profiles),
        "events": len(data.events),
        "bots": int(data.truth["is_bot"].sum()),
        "format": fmt,
        "catalogue": data.catalogue.to_dict(orient="records"),
        "files": {name: path.name for name, path in paths.items()},
    }
    paths["meta"] = out_dir / "meta.json"
    paths["meta"].write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return paths


_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CSV_SUFFIXES + _PARQUET_SUFFIXES:
        raise InvalidInputError(
            "path",
            f"unsupported file type {suffix or '(none)'!r} for {path.name}; "
            "use .csv, .tsv, .txt or .parquet",
        )
    if not path.is_file():
        raise InvalidInputError("path", f"no such file: {path}")
    if path.stat().st_size == 0:
        raise InvalidInputError("path", f"{path.name} is empty; expected a header row and rows")
    if suffix in _PARQUET_SUFFIXES:
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as e:
            raise InvalidInputError("path", f"{path.name} is not readable Parquet: {e}") from e
    else:
        frame = _read_csv(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            missing[0],
            f"required column missing from {path.name}; found columns {list(frame.columns)}",
        )
    if frame.empty:
        raise InvalidInputError("path", f"{path.name} has a header but no rows")
    for column in required:
        blank = frame[column].isna()
        if blank.any():
            raise InvalidInputError(column, f"row {_row(blank)} is empty")
    frame["user_id"] = frame["user_id"].astype("str")
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            header = handle.readline()
    except UnicodeDecodeError as e:
        raise InvalidInputError("path", f"{path.name} is not UTF-8 text: {e}") from e
    if not header.strip():
        raise InvalidInputError("path", f"{path.name} is empty; expected a header row and rows")
    sep = max((",", ";", "\t"), key=header.count)
    try:
        # Only an empty cell is missing: a user called "NA" or an item "None" stays text.
        return pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            skipinitialspace=True,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InvalidInputError("path", f"{path.name} is not valid CSV: {e}") from e


def _row(mask: pd.Series) -> str:
    """The first flagged data row, counted from 1 after the header."""
    return str(int(np.flatnonzero(mask.to_numpy())[0]) + 1)


def _parse_times(frame: pd.DataFrame, column: str) -> pd.Series:
    raw = frame[column]
    if isinstance(raw.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(raw):
        parsed = pd.to_datetime(raw, utc=True)
    else:
        text = raw.astype("str").str.strip()
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        retry = parsed.isna() & text.notna()
        if retry.any():
            # Other layouts ("03/02/2025 10:00") cost a slow per-value parse; only for stragglers.
            parsed[retry] = pd.to_datetime(text[retry], utc=True, format="mixed", errors="coerce")
        bad = parsed.isna() & text.notna()
        if bad.any():
            value = text[bad].iloc[0]
            raise InvalidInputError(column, f"row {_row(bad)}: cannot parse {value!r} as a time")
    return parsed.dt.as_unit("ns")


def read_events(path: Path) -> pd.DataFrame:
    """Read events from CSV (comma, semicolon or tab) or Parquet; times become UTC."""
    frame = _read_table(path, ("user_id", "event_time", "event_type"))
    frame["event_time"] = _parse_times(frame, "event_time")
    frame["event_type"] = frame["event_type"].astype("str").str.strip()
    if "value" in frame.columns:
        raw = frame["value"]
        value = pd.to_numeric(raw, errors="coerce")
        bad = value.isna() & raw.notna() & (raw.astype("str").str.strip() != "")
        if bad.any():
            raise InvalidInputError(
                "value", f"row {_row(bad)}: {raw[bad].iloc[0]!r} is not a number"
            )
        frame["value"] = value.astype(np.float64)
    else:
        frame["value"] = np.nan
    if "item" in frame.columns:
        frame["item"] = frame["item"].astype("str")
    first = ["user_id", "event_time", "event_type", "value"]
    return frame[first + [c for c in frame.columns if c not in first]]


def read_profiles(path: Path) -> pd.DataFrame:
    """Read user profiles from CSV or Parquet; requires user_id, keeps every other column."""
    frame = _read_table(path, ("user_id",))
    if "signup_at" in frame.columns:
        frame["signup_at"] = _parse_times(frame, "signup_at")
    if "age" in frame.columns:
        age = pd.to_numeric(frame["age"], errors="coerce")
        bad = age.isna() & frame["age"].notna()
        if bad.any():
            value = frame["age"][bad].iloc[0]
            raise InvalidInputError("age", f"row {_row(bad)}: {value!r} is not a number")
        frame["age"] = age.astype("Int64") if age.isna().any() else age.astype(np.int64)
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].astype("str")
    return frame
