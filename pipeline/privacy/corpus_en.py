"""Labelled English texts for measuring how well the privacy step finds personal data.

Each text is the kind tenants send (support tickets, CRM notes, chat lines, form dumps, e-mails,
free narrative) with Faker's values for six English-speaking locales dropped into templates of
our own, and the character offsets of every personal value. Texts with no personal data and
look-alikes that are not personal data (order, ticket and tracking numbers, prices, versions,
product names, weekdays) are mixed in, so precision is measured too.

The templates are written here, not taken from any public PII corpus, and the values come from
Faker, not from the recognizers' patterns: the score on them says something about text the
analyzer was not built against, and `pushpilot privacy eval --input` takes any other labelled set.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from string import Formatter

from faker import Faker

__all__ = ["SOURCES", "LabelledText", "english_texts"]

_LOCALES = ("en_US", "en_GB", "en_CA", "en_AU", "en_IE", "en_IN")
_LOCALE_WEIGHTS = (5, 3, 1, 1, 1, 1)


@dataclass(frozen=True, slots=True)
class LabelledText:
    """A text, the (start, end, label) spans of the personal data in it, and its family."""

    text: str
    spans: tuple[tuple[int, int, str], ...]
    source: str


Piece = tuple[str, str | None]  # (text, label or None)
Gen = Callable[["_Values"], list[Piece]]

_NATIONALITIES = ["American", "British", "Canadian", "Australian", "Irish", "Indian", "German",
                  "French", "Spanish", "Italian", "Polish", "Brazilian", "Mexican", "Nigerian",
                  "Pakistani", "Filipino", "Chinese", "Japanese", "Korean", "Dutch", "Swedish",
                  "Portuguese", "Romanian", "Ukrainian", "Turkish", "Egyptian", "Kenyan"]
_PRODUCTS = ["Premium Plan", "Family Bundle", "Apple Watch", "Galaxy S23", "Kindle Paperwhite",
             "Pro Annual", "Starter Pack", "Gift Card", "Smart Thermostat", "Air Fryer XL",
             "Noise Cancelling Headphones", "Trail Runner 3", "Gold Membership"]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_TEAMS = ["Billing", "Customer Success", "Tier 2 Support", "Returns", "Fraud Prevention",
          "Onboarding", "Logistics"]
_CHANNELS = ["the app", "the website", "live chat", "the call centre", "e-mail", "SMS"]
_ISSUES = ["double charge", "missing parcel", "login loop", "wrong size", "refund delay",
           "cancelled subscription", "broken screen", "late delivery", "duplicate account"]
_DL_STATES = ["CA", "NY", "TX", "FL", "WA", "IL", "PA", "OH", "GA", "NC"]


class _Values:
    """Fake values, one Faker per locale, every choice drawn from one seeded Random."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._fakers = {}
        for i, locale in enumerate(_LOCALES):
            fake = Faker(locale)
            fake.seed_instance(seed * 7919 + i)
            self._fakers[locale] = fake
        self.fake = self._fakers["en_US"]

    def pick_locale(self) -> None:
        locale = self.rng.choices(_LOCALES, _LOCALE_WEIGHTS)[0]
        self.fake = self._fakers[locale]
        self.locale = locale

    def us(self) -> Faker:
        return self._fakers["en_US"]

    def digits(self, n: int) -> str:
        return "".join(self.rng.choice(string.digits) for _ in range(n))


def _one(label: str, make: Callable[[_Values], str]) -> Gen:
    return lambda v: [(make(v), label)]


def _name(v: _Values) -> list[Piece]:
    first, last = v.fake.first_name(), v.fake.last_name()
    if v.rng.random() < 0.15:
        return [(f"{first} {v.fake.first_name()} {last}", "PERSON")]
    return [(f"{first} {last}", "PERSON")]


def _titled_name(v: _Values) -> list[Piece]:
    title = v.rng.choice(["Mr.", "Mrs.", "Ms.", "Dr.", "Mr", "Ms", "Prof."])
    return [(title, "TITLE"), (" ", None), (v.fake.last_name(), "LAST_NAME")]


def _phone(v: _Values) -> str:
    if v.rng.random() < 0.2:
        return f"({v.digits(3)}) {v.digits(3)}-{v.digits(4)}"
    return v.fake.phone_number()


def _email(v: _Values) -> str:
    if v.rng.random() < 0.5:
        return v.fake.email()
    first, last = v.fake.first_name().lower(), v.fake.last_name().lower()
    sep = v.rng.choice([".", "_", ""])
    return f"{first}{sep}{last}{v.rng.choice(['', str(v.rng.randint(1, 99))])}@{v.fake.free_email_domain()}"


def _card(v: _Values) -> str:
    number = v.fake.credit_card_number(card_type=v.rng.choice(["visa16", "mastercard", "amex", "discover"]))
    if v.rng.random() < 0.4 and len(number) == 16:
        return " ".join(number[i:i + 4] for i in range(0, 16, 4))
    if v.rng.random() < 0.2 and len(number) == 16:
        return "-".join(number[i:i + 4] for i in range(0, 16, 4))
    return number


def _iban(v: _Values) -> str:
    iban = v.fake.iban()
    if v.rng.random() < 0.4:
        return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
    return iban


def _ssn(v: _Values) -> str:
    ssn = v.us().ssn()
    return ssn if v.rng.random() < 0.8 else ssn.replace("-", " ")


def _ip(v: _Values) -> str:
    return v.fake.ipv4_public() if v.rng.random() < 0.85 else v.fake.ipv6()


def _url(v: _Values) -> str:
    base = v.fake.url().rstrip("/")
    if v.rng.random() < 0.5:
        return f"{base}/{v.fake.user_name()}"
    return base


def _dob(v: _Values) -> str:
    d = v.fake.date_of_birth(minimum_age=18, maximum_age=90)
    style = v.rng.randrange(5)
    if style == 0:
        return d.strftime("%m/%d/%Y")
    if style == 1:
        return d.strftime("%d/%m/%Y")
    if style == 2:
        return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"
    if style == 3:
        return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"
    return d.isoformat()


def _street(v: _Values) -> str:
    return v.fake.street_address()


def _address(v: _Values) -> list[Piece]:
    """A full postal address, labelled by part the way people's records split it."""
    if v.locale in ("en_US", "en_CA", "en_AU"):
        state = v.fake.state_abbr() if hasattr(v.fake, "state_abbr") else v.us().state_abbr()
        pieces: list[Piece] = [(v.fake.street_address(), "STREET"), (", ", None),
                               (v.fake.city(), "CITY"), (", ", None), (state, "STATE"),
                               (" ", None), (v.fake.postcode(), "ZIP")]
    else:
        pieces = [(v.fake.street_address(), "STREET"), (", ", None), (v.fake.city(), "CITY"),
                  (" ", None), (v.fake.postcode(), "ZIP")]
    if v.rng.random() < 0.2:
        pieces += [(", ", None), (v.fake.current_country(), "COUNTRY")]
    return pieces


def _full_address(v: _Values) -> list[Piece]:
    return [(v.fake.address().replace("\n", ", "), "ADDRESS")]


def _driver_license(v: _Values) -> str:
    style = v.rng.randrange(3)
    if style == 0:
        return v.rng.choice(string.ascii_uppercase) + v.digits(7)
    if style == 1:
        return f"{v.rng.choice(string.ascii_uppercase)}{v.digits(3)}-{v.digits(4)}-{v.digits(4)}"
    return v.digits(9)


def _passport(v: _Values) -> str:
    if v.rng.random() < 0.5:
        return v.digits(9)
    return v.rng.choice(string.ascii_uppercase) + v.digits(8)


# Placeholder -> generator. Plain names are values with no personal data.
_FIELDS: dict[str, Gen] = {
    "name": _name,
    "first": _one("FIRST_NAME", lambda v: v.fake.first_name()),
    "last": _one("LAST_NAME", lambda v: v.fake.last_name()),
    "titled": _titled_name,
    "phone": _one("PHONE_NUMBER", _phone),
    "email": _one("EMAIL_ADDRESS", _email),
    "card": _one("CREDIT_CARD", _card),
    "iban": _one("IBAN", _iban),
    "ssn": _one("US_SSN", _ssn),
    "ip": _one("IP_ADDRESS", _ip),
    "url": _one("URL", _url),
    "dob": _one("DATE_OF_BIRTH", _dob),
    "age": _one("AGE", lambda v: str(v.rng.randint(19, 88))),
    "street": _one("STREET", _street),
    "city": _one("CITY", lambda v: v.fake.city()),
    "country": _one("COUNTRY", lambda v: v.fake.country()),
    "address": _address,
    "full_address": _full_address,
    "nationality": _one("NATIONALITY", lambda v: v.rng.choice(_NATIONALITIES)),
    "company": _one("ORGANIZATION", lambda v: v.fake.company()),
    "dl": _one("DRIVER_LICENSE", _driver_license),
    "dl_state": lambda v: [(v.rng.choice(_DL_STATES), None)],
    "passport": _one("PASSPORT", _passport),
    # look-alikes
    "order": lambda v: [(f"{v.rng.choice(['A', 'B', 'ORD-', '#'])}{v.digits(v.rng.choice([6, 7, 8]))}", None)],
    "ticket": lambda v: [(v.digits(v.rng.choice([5, 6])), None)],
    "tracking": lambda v: [(f"1Z{v.digits(4)}{v.rng.choice(string.ascii_uppercase)}{v.digits(9)}", None)],
    "price": lambda v: [(f"{v.rng.choice(['$', '£', '€', 'A$'])}{v.rng.randint(3, 900)}.{v.digits(2)}", None)],
    "version": lambda v: [(f"{v.rng.randint(1, 17)}.{v.rng.randint(0, 12)}.{v.rng.randint(0, 30)}", None)],
    "product": lambda v: [(v.rng.choice(_PRODUCTS), None)],
    "weekday": lambda v: [(v.rng.choice(_WEEKDAYS), None)],
    "month": lambda v: [(v.rng.choice(_MONTHS), None)],
    "team": lambda v: [(v.rng.choice(_TEAMS), None)],
    "channel": lambda v: [(v.rng.choice(_CHANNELS), None)],
    "issue": lambda v: [(v.rng.choice(_ISSUES), None)],
    "n": lambda v: [(str(v.rng.randint(2, 48)), None)],
    "time": lambda v: [(f"{v.rng.randint(1, 12)}:{v.rng.choice(['00', '15', '30', '45'])} {v.rng.choice(['am', 'pm'])}", None)],
}

_TEMPLATES: dict[str, list[str]] = {
    "support": [
        "Ticket {ticket}: customer {name} reports a {issue} on order {order}. Call back on {phone} after {time}.",
        "Hi team, {name} ({email}) was charged {price} twice for the {product}. Card on file ends {card}; please refund.",
        "Escalated to {team}: {titled} says the parcel {tracking} never reached {address}.",
        "Caller gave SSN {ssn} to verify identity, then asked us to update the mailing address to {full_address}.",
        "Refund for order {order} approved by {team}. Customer {first} will get {price} back within {n} days.",
        "Account locked after logins from {ip}. Owner {name} confirmed by phone ({phone}) that it was not them.",
        "{name} wants the {product} shipped to {street}, {city} instead of the billing address.",
        "Chargeback on card {card}; the cardholder {name} disputes the {price} payment made on {weekday}.",
        "Customer could not log in to {channel} on version {version}; reset link sent to {email}.",
        "Please wire the refund to IBAN {iban}, account holder {name}.",
    ],
    "crm_note": [
        "Met {name} from {company} on {weekday}. Decision maker; prefers calls on {phone}.",
        "{titled} ({company}) renewed the {product} for {n} seats. Invoice to {email}.",
        "Lead: {first} {last}, {age} years old, based in {city}. Interested in the {product}.",
        "Follow-up with {name} moved to {month}; new direct line {phone}, office at {address}.",
        "Key account {company}: main contact {name}, deputy {first}. Churn risk after the {issue}.",
        "Prospect visited pricing from {ip} three times; matched to {name} at {company}.",
        "Note: {name} is {nationality}, relocating to {country} in {month}; keep the account open.",
        "Upsell call done. {first} liked the {product} demo; quote sent for {price} per month.",
        "Customer profile: {name}, DOB {dob}, member since {month}. Loyalty tier gold.",
        "Partner portal: {url} (owner {name}).",
    ],
    "chat": [
        "hi, this is {name}, my order {order} still hasn't arrived",
        "you can reach me at {phone} or {email}",
        "my name is {first} and my card {card} got declined again",
        "Agent: can I have your date of birth? Customer: {dob}",
        "its {first} {last} here, I moved to {address} last month",
        "sure, my SSN is {ssn}",
        "ok thanks, the tracking says {tracking} is out for delivery on {weekday}",
        "i'm {age} and my son wants an account too, his name is {first}",
        "check my page {url} for the photos of the {issue}",
        "lol no, I'm {nationality}, I don't have a US phone",
    ],
    "form": [
        "Name: {name}\nEmail: {email}\nPhone: {phone}\nAddress: {full_address}",
        "Full name: {name} | Date of birth: {dob} | Nationality: {nationality}",
        "First name: {first}; Last name: {last}; City: {city}; Country: {country}",
        "Applicant: {titled}\nEmployer: {company}\nSSN: {ssn}\nDriver's license: {dl} ({dl_state})",
        "Passport no.: {passport}\nNationality: {nationality}\nDOB: {dob}",
        "Card number: {card}\nName on card: {name}\nBilling address: {address}",
        "IBAN: {iban}\nAccount holder: {name}\nReference: {order}",
        "Street: {street}\nCity: {city}\nPhone: {phone}",
        "Age: {age}\nEmail: {email}\nReferral code: {order}",
        "Login IP: {ip}\nUser: {email}\nApp version: {version}",
    ],
    "email": [
        "Dear {name},\n\nThank you for your order {order}. It will ship to {address}.\n\nKind regards,\n{team}",
        "Hi {first},\n\nYour {product} renewal of {price} failed on card {card}. Please update it.\n\nThanks",
        "Hello {titled},\n\nWe could not reach you on {phone}. Please reply to this e-mail or call us.",
        "From: {email}\nTo: support\nSubject: {issue}\n\nHi, I'm {name} and the {product} stopped working.",
        "Dear Sir or Madam,\n\nplease update my details: {full_address}, phone {phone}.\n\nRegards,\n{name}",
        "Hi {first}, your statement for {month} is ready. The payment from IBAN {iban} was received.",
        "Best regards,\n{name}\n{company}\n{phone}",
        "Hello, my colleague {name} ({email}) will take over the account from {weekday}.",
        "Dear {titled}, welcome to the {product}. Your member page is {url}.",
        "Hi {first},\n\nyour passport number {passport} is on file for the trip in {month}.",
    ],
    "narrative": [
        "{name} was born on {dob} in {city} and moved to {country} at the age of {age}.",
        "After the {issue}, {titled} wrote to {company} asking for {price} in compensation.",
        "{name}, a {age}-year-old {nationality} engineer, works for {company} in {city}.",
        "The delivery driver left the parcel with {first}, a neighbour at {street}.",
        "According to the records, {name} lives at {address} and banks with IBAN {iban}.",
        "{first} {last} and {first} bought the {product} together in {month}.",
        "Police said the card {card} belonged to {name} of {city}.",
        "The survey was completed by {name} ({email}) from the IP {ip} on {weekday}.",
        "{titled} has held driver's license {dl} since moving to {city}.",
        "{name} posted the review on {url} a week after the {issue}.",
    ],
}
_PLAIN: list[str] = [
    "Order {order} shipped on {weekday}; tracking {tracking}. Total {price}.",
    "Release {version} fixes the {issue} reported through {channel}.",
    "The {product} is back in stock from {month}. Price {price}, limit {n} per customer.",
    "Ticket {ticket} closed by {team} after {n} hours.",
    "Reminder: the {team} stand-up moved to {time} on {weekday}.",
    "Flash sale: {product} for {price} until {weekday} midnight.",
    "Customer asked about the {product}; no personal details were given.",
    "Invoice {order} for {price} is due at the end of {month}.",
    "Escalation {ticket}: {issue} seen on version {version} in {channel}.",
    "Thanks for contacting us! Our team replies within {n} hours, {weekday} to Friday.",
]
SOURCES: tuple[str, ...] = (*_TEMPLATES, "plain")


def _render(template: str, values: _Values) -> tuple[str, list[tuple[int, int, str]]]:
    parts: list[str] = []
    spans: list[tuple[int, int, str]] = []
    at = 0
    for literal, field, _spec, _conv in Formatter().parse(template):
        parts.append(literal)
        at += len(literal)
        if field is None:
            continue
        for text, label in _FIELDS[field](values):
            if label is not None and text:
                spans.append((at, at + len(text), label))
            parts.append(text)
            at += len(text)
    return "".join(parts), spans


def english_texts(seed: int, n: int, sources: Sequence[str] | None = None) -> list[LabelledText]:
    """`n` labelled texts, the same ones for the same seed; about 15% have no personal data."""
    chosen = tuple(sources) if sources is not None else SOURCES
    unknown = sorted(set(chosen) - set(SOURCES))
    if unknown or not chosen:
        raise ValueError(f"sources: unknown {unknown or 'empty'}; choose from {list(SOURCES)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    values = _Values(seed)
    pii_sources = [s for s in chosen if s != "plain"]
    items: list[LabelledText] = []
    for _ in range(n):
        values.pick_locale()
        if "plain" in chosen and (not pii_sources or values.rng.random() < 0.15):
            source, template = "plain", values.rng.choice(_PLAIN)
        else:
            source = values.rng.choice(pii_sources)
            template = values.rng.choice(_TEMPLATES[source])
        text, spans = _render(template, values)
        items.append(LabelledText(text, tuple(spans), source))
    return items
