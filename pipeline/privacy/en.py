"""English personal data that spaCy's small model misses or cannot type: street addresses and
postcodes, dates with a year, ages, titled names, names after a cue ("my name is", "Dear"), and
the values behind form labels ("DOB:", "SSN:", "Passport no.").

Every pattern either has a shape few other strings have (a house number, a street name and a
street suffix; a UK postcode) or needs the label or cue in front of it. Stock Presidio leaves all
of these to NER, which tags a fake street as three unrelated entities, or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

__all__ = [
    "EnglishCueRecognizer",
    "EnglishPhoneRecognizer",
    "EnglishShapeRecognizer",
    "keep_spacy_result",
]

# USPS street suffixes (Publication 28, C1) and their common British/Australian counterparts.
_SUFFIXES = (
    "Alley|Aly|Annex|Arcade|Avenue|Ave|Bayou|Beach|Bend|Bluffs?|Bottom|Boulevard|Blvd|Branch|Br|"
    "Bridge|Brg|Brooks?|Burgs?|Bypass|Byp|Camp|Canyon|Cape|Causeway|Center|Centre|Ctr|Circles?|"
    "Cir|Cliffs?|Close|Club|Commons?|Corners?|Course|Courts?|Ct|Coves?|Creek|Crescent|Cres|"
    "Crest|Crossing|Xing|Crossroad|Curve|Dale|Dam|Divide|Drives?|Dr|Estates?|Esplanade|"
    "Expressway|Expy|Extensions?|Falls?|Ferry|Fields?|Flats?|Fords?|Forest|Forges?|Forks?|Fort|"
    "Freeway|Fwy|Gardens?|Gdns|Gateway|Glens?|Green|Greens|Groves?|Harbors?|Haven|Heights|Hts|"
    "Highway|Hwy|Hills?|Hollow|Inlet|Islands?|Isle|Junctions?|Keys?|Knolls?|Lakes?|Land|Landing|"
    "Lane|Ln|Light|Lights|Loaf|Locks?|Lodge|Loop|Mall|Manors?|Meadows?|Mews|Mills?|Missions?|"
    "Motorway|Mount|Mountains?|Neck|Orchard|Oval|Overpass|Parade|Parks?|Parkways?|Pkwy|Pass|"
    "Passage|Path|Pike|Pines?|Place|Pl|Plains?|Plaza|Plz|Points?|Pt|Ports?|Prairie|Promenade|"
    "Quay|Radial|Ramp|Ranch|Rapids?|Rest|Ridges?|Rise|River|Road|Roads|Rd|Route|Row|Rue|Run|"
    "Shoals?|Shores?|Skyway|Springs?|Spurs?|Squares?|Sq|Station|Stravenue|Streams?|Street|"
    "Streets|St|Summit|Terrace|Ter|Throughway|Trace|Track|Trafficway|Trail|Trl|Trailer|Tunnel|"
    "Turnpike|Tpke|Underpass|Unions?|Vale|Valleys?|Via|Viaducts?|Views?|Villages?|Villas?|"
    "Ville|Vista|Walks?|Wall|Way|Ways|Wells?|Wharf|Wynd"
)
_WORD = r"[A-Z][A-Za-z'\-]*\.?"
_UNIT = r"(?:,?\s*(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Studio|Room|Rm\.?|Floor|Fl\.?|#)\s*#?\d+[A-Za-z]?)"
_US_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|"
    "NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|AS|GU|MP|PR|VI|AA|AE|AP"
)
_AU_STATES = "NSW|VIC|QLD|TAS|ACT|NT|WA|SA"
_CA_PROVINCES = "AB|BC|MB|NB|NL|NS|NT|NU|ON|PE|QC|SK|YT"
_UK_POSTCODE = r"(?:GIR 0AA|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2})"
_CA_POSTCODE = r"[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z] ?\d[ABCEGHJ-NPRSTV-Z]\d"
_EIRCODE = r"[AC-FHKNPRTV-Y]\d[\dW] ?[0-9AC-FHKNPRTV-Y]{4}"
# A state or province, then a postcode of any of the formats (records mix them up).
_REGION_AND_CODE = (
    rf"(?:(?:{_US_STATES}|{_AU_STATES}|{_CA_PROVINCES})\s+(?:\d{{5}}(?:-\d{{4}})?|\d{{4}}|{_CA_POSTCODE})|"
    rf"{_UK_POSTCODE}|{_CA_POSTCODE}|{_EIRCODE})"
)
# After a street, a bare six-digit Indian PIN code is a postcode too.
_TAIL = (
    rf"(?:,?\s+(?:{_WORD}\s+){{0,3}}?{_WORD},?\s+(?:{_REGION_AND_CODE}|\d{{6}})(?![A-Za-z0-9]))?"
)
_STREET = (
    rf"(?:(?:(?:Flat|Apartment|Apt\.?|Studio|Unit|Suite)\s+\d+[A-Za-z]?,?\s+)?"
    rf"\d{{1,6}}[A-Za-z]?(?:-\d{{1,4}})?\s+|(?:Flat|Apartment|Studio|Unit)\s+\d+[A-Za-z]?,?\s+)"
    rf"(?:{_WORD}\s+){{0,3}}{_WORD}\s+(?i:{_SUFFIXES})\.?(?![A-Za-z])"
)
_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_YEAR = r"(?:1[89]\d{2}|20\d{2})"
_DAY = r"(?:[0-3]?\d)(?:st|nd|rd|th)?"
_DATES = (
    rf"\b[0-3]?\d[/.\-][0-3]?\d[/.\-]{_YEAR}\b",
    rf"\b{_YEAR}[/.\-][01]?\d[/.\-][0-3]?\d\b",
    rf"\b{_DAY}(?:\s+of)?\s+{_MONTH},?\s+{_YEAR}\b",
    rf"\b{_MONTH}\s+{_DAY},?\s+{_YEAR}\b",
)
_NAME_WORD = r"(?:[A-Z]'[A-Z][a-z]+|(?:Mc|Mac)[A-Z][a-z]+|[A-Z][a-z][a-z'\-]*)"
_NAME = rf"{_NAME_WORD}(?:[ \-]{_NAME_WORD}){{0,2}}"
_TITLE = r"(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Dame|Rev|Fr)\.?"
# A cue, then a capitalised name: "my name is Ada Byron", "Dear Ms Okafor,", "regards,\nLi Wei".
_NAME_CUES = (
    r"(?i:my name is|my name's|name is|i'm|i am|this is|it's|named|call me|calls me|spoke (?:to|with)|speak (?:to|with)|"
    r"ask for|on behalf of|c/o|attn:?|attention:?|dear|hi|hello|hey|thanks|thank you|cheers|"
    r"regards|sincerely|best wishes|signed|from|guardian|beneficiary|cardholder|husband|wife|"
    r"son|daughter|mother|father|partner|colleague|manager|nurse|doctor)"
)
# A cue, then a place: "was born in Cruzhaven", "moving to West Margaretstad".
_PLACE_CUES = (
    r"(?i:born in|moved to|moving to|relocat(?:e|ed|ing) to|lives in|living in|based in|"
    r"resident of|resides in|grew up in|hometown(?: is)?)"
)
_FORM_LABELS: tuple[tuple[str, str, float], ...] = (
    # (entity type, label words, score); the value runs to the end of the line or a ";" or "|".
    ("PERSON", r"(?:full |first |last |middle |given |family |maiden |preferred )?name|surname|"
               r"customer|client|patient|student|contact|account holder|cardholder|"
               r"emergency contact|next of kin|guardian|parent|beneficiary|agent|signed", 0.6),
    ("ADDRESS", r"(?:home |mailing |billing |shipping |postal |street |delivery |new |old )?"
                r"address|addr|street|residence", 0.6),
    ("ADDRESS", r"zip(?: code)?|post ?code|postal code|pin code", 0.6),
    ("LOCATION", r"city|town|county|state|province|country|country of birth|place of birth|"
                 r"birthplace", 0.5),
    ("DATE_TIME", r"dob|d\.o\.b\.?|date of birth|birth ?date|birthday|born", 0.6),
    ("NRP", r"nationality|citizenship|ethnicity|religion", 0.6),
    ("ORGANIZATION", r"employer|company|organi[sz]ation|workplace|school|university", 0.5),
    ("US_SSN", r"ssn|social security(?: number| no\.?)?|soc\. ?sec\.?", 0.7),
    ("US_PASSPORT", r"passport(?: number| no\.?| #)?", 0.7),
    ("US_DRIVER_LICENSE", r"driver'?s? licen[cs]e(?: number| no\.?| #)?|dl(?: number| no\.?| #)?|"
                          r"licen[cs]e (?:number|no\.?|#)", 0.7),
    ("AGE", r"age", 0.6),
)
_ID_VALUE = r"(?-i:[A-Z0-9](?:[A-Z0-9\-]| (?=[A-Z0-9])){3,18}[A-Z0-9])"
# Free-text cues for identity documents: "passport number X12345678", "driver's license is D123".
_DOCUMENT_CUES: tuple[tuple[str, str], ...] = (
    ("US_PASSPORT", r"passport"),
    ("US_DRIVER_LICENSE", r"driver'?s?\s+licen[cs]e|driving\s+licen[cs]e|\bDL"),
)
_DOCUMENT_VALUE = r"(?-i:[A-Z]{0,2}\d{6,9}|[A-Z]\d{3}-\d{4}-\d{4}|[A-Z]\d{2,4}[- ]\d{3,4}[- ]\d{3,4})"
# Company names by their legal or customary suffix: "Fagan and Sons", "Lamb Group", "Acme Ltd".
_COMPANY_SUFFIXES = (
    r"Inc\.?|LLC|L\.L\.C\.|Ltd\.?|Limited|PLC|plc|LLP|Corp\.?|Corporation|Co\.|Company|"
    r"Group|Holdings|and Sons|& Sons|Brothers|Bros\.?|Pty\.? Ltd\.?|GmbH|AG|S\.A\.|Partners|"
    r"Associates|Industries|Enterprises|Solutions|Technologies|Consulting"
)
_COMPANY = rf"\b(?:[A-Z][A-Za-z'&]+(?:[,-]\s?|\s))(?:(?:[A-Z][A-Za-z']+|and|&)(?:[,-]\s?|\s)){{0,3}}?(?:{_COMPANY_SUFFIXES})(?![A-Za-z])"


class _Rule:
    __slots__ = ("entity_type", "group", "regex", "score")

    def __init__(self, entity_type: str, regex: str, score: float, group: int | str = 0):
        self.entity_type = entity_type
        self.regex = re.compile(regex)
        self.score = score
        self.group = group

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        for match in self.regex.finditer(text):
            start, end = match.span(self.group)
            if start >= 0 and end > start:
                yield start, end


def _form_rules() -> list[_Rule]:
    rules = [
        # "Contact: Rahul Verma, rahul@..." - a name-shaped value ends where the name does.
        _Rule(entity_type, rf"(?im)(?:^|[;|,\n]|\s{{2,}})\s*(?:{label})\s*[:=]\s*(?-i:(?:{_TITLE}\s+)?(?P<v>{_NAME}))\b", score, "v")
        for entity_type, label, score in _FORM_LABELS
        if entity_type in ("PERSON", "LOCATION")
    ]
    for entity_type, label, score in _FORM_LABELS:
        if entity_type.startswith("US_"):  # an identifier ends where its characters do
            value, end = _ID_VALUE, r"(?![A-Za-z0-9\-])"
        elif entity_type == "PERSON":  # a name has no digits, "@" or commas in it
            value, end = r"[^\s;|:,@\d](?:[^\n;|,@\d]*?[^\s;|.,!?@\d])?", r"[.!?]?\s*(?=$|[;|,\n])"
        else:  # free text runs to the end of the field
            value, end = r"[^\s;|:](?:[^\n;|]*?[^\s;|.,!?])?", r"[.,!?]?\s*(?=$|[;|\n])"
        rules.append(
            _Rule(
                entity_type,
                rf"(?im)(?:^|[;|,\n]|\s{{2,}})\s*(?:{label})\s*(?:[:=#]|-\s)\s*(?P<v>{value}){end}",
                score,
                "v",
            )
        )
    return rules


class _RulesRecognizer(EntityRecognizer):
    RULES: list[_Rule] = []

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            supported_entities=sorted({rule.entity_type for rule in self.RULES}),
            supported_language=supported_language,
            name=type(self).__name__,
        )

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        wanted = set(entities)
        return [
            RecognizerResult(rule.entity_type, start, end, rule.score)
            for rule in self.RULES
            if rule.entity_type in wanted
            for start, end in rule.spans(text)
        ]


class EnglishShapeRecognizer(_RulesRecognizer):
    """Values whose shape alone says what they are: street addresses (with the city, state and
    postcode that follow), postcodes after a state, dates with a year, ages, titled names."""

    RULES = [
        _Rule("ADDRESS", rf"(?<![\w\-]){_STREET}{_UNIT}?{_TAIL}", 0.9),
        _Rule("ADDRESS", rf"\b(?:{_WORD}\s+){{0,2}}{_WORD},?\s+{_REGION_AND_CODE}(?![A-Za-z0-9])", 0.9),
        # The number after the street ("Baker Street 12", "Hauptstrasse 5a"), or a named street
        # with no number after "on", "at", "near" ("lives on Quigley Avenue").
        _Rule("ADDRESS", rf"\b(?:{_WORD}\s+){{0,3}}{_WORD}\s+(?i:{_SUFFIXES})\.?\s+\d{{1,5}}[A-Za-z]?\b(?![.,]\d)", 0.86),
        _Rule("ADDRESS", r"\b[A-Z][a-zäöüß]+(?:straße|strasse|str\.|weg|gasse|platz|allee|damm|laan|straat|gade|vej|gatan|vägen)\s+\d{1,5}[a-z]?\b", 0.86),
        _Rule("ADDRESS", rf"(?i:\b(?:on|at|in|off|near|along|onto|down|up)\s+)(?P<v>(?:{_WORD}\s+){{0,2}}{_WORD}\s+(?:Street|Avenue|Road|Lane|Drive|Boulevard|Crescent|Terrace|Parkway|Highway|Court|Place|Square|Close|Way))\b", 0.86, "v"),
        # Streets named before their kind ("4 Rue de la Paix", "12 Via Roma") or without one,
        # when a city and postcode follow ("1150 W Broadway, Vancouver BC V6H 1G8").
        _Rule("ADDRESS", rf"(?<![\w\-])\d{{1,5}},?\s+(?:Rue|Via|Calle|Avenida|Avenue|Rua|Piazza|Plaza|Strada|Boulevard|Place|Chemin|Allee|Carrer)\s+(?:(?:de|del|della|di|do|da|du|des|la|le|los|las|dos|das)\s+){{0,2}}{_WORD}(?:\s+{_WORD}){{0,2}}", 0.8),
        _Rule("ADDRESS", rf"(?<![\w\-])\d{{1,6}}[A-Za-z]?\s+(?:{_WORD}\s+){{0,3}}{_WORD},\s+(?:{_WORD}\s+){{0,2}}{_WORD},?\s+{_REGION_AND_CODE}(?![A-Za-z0-9])", 0.85),
        _Rule("ADDRESS", rf"(?<![A-Za-z0-9]){_UK_POSTCODE}(?![A-Za-z0-9])", 0.86),
        # US military mail: "PSC 7287, Box 8193, APO AE 44942", "USNS Miller, FPO AP 12345".
        _Rule("ADDRESS", r"\b(?:(?:PSC|CMR|Unit)\s+\d{1,5},?\s+Box\s+\d{1,5}|(?:USNS|USNV|USS|USCGC)\s+[A-Z][a-z]+),?\s+(?:APO|FPO|DPO)\s+(?:AA|AE|AP)\s+\d{5}\b", 0.9),
        *(_Rule("DATE_TIME", date, 0.6) for date in _DATES),
        _Rule("AGE", r"\b(\d{1,3})(?=[\s\-]*(?:years?|yrs?)[\s\-]*old\b)", 0.6, 1),
        _Rule("AGE", r"(?i:\baged?\s+)(\d{1,3})\b", 0.6, 1),
        _Rule("AGE", r"(?i:\bage\s+of\s+)(\d{1,3})\b", 0.6, 1),
        _Rule("AGE", r"(?i:\bi'?m|\bi\s+am)\s+(\d{1,2})(?=\s*(?:,|\.|!|$|and\b|now\b|this\b|y/?o\b|yrs?\b))", 0.5, 1),
        _Rule("ORGANIZATION", _COMPANY, 0.5),
        # Double-barrelled and listed surnames, the other two shapes firms are named in
        # ("Banks-Patel", "Turner, Lyons and Brock"); a person so named is personal data too.
        _Rule("ORGANIZATION", r"\b[A-Z][a-z]{2,}-[A-Z][a-z]{2,}\b(?!-)", 0.4),
        _Rule("ORGANIZATION", r"\b[A-Z][a-z]{2,}, [A-Z][a-z]{2,},? (?:and|&) [A-Z][a-z]{2,}\b", 0.4),
        _Rule("PERSON", rf"\b{_TITLE}\s+{_NAME}", 0.6),
    ]


class EnglishCueRecognizer(_RulesRecognizer):
    """Values that need their cue: a name after "my name is" or "Dear", a value after a form
    label such as "DOB:" or "Passport no.:"; "Dear Sir" and "from Monday" are no names."""

    RULES = [
        _Rule("PERSON", rf"\b{_NAME_CUES}[,:]?\s+(?:{_TITLE}\s+)?(?P<v>{_NAME})\b", 0.5, "v"),
        _Rule("LOCATION", rf"\b{_PLACE_CUES}\s+(?P<v>{_NAME})\b", 0.5, "v"),
        # A postcode or a birthday after its words in prose: "my zip code is 97201",
        # "her birthday is March 3rd" (no year, so the date rules leave it).
        _Rule("ADDRESS", rf"(?i:\b(?:zip(?:\s*code)?|postal\s+code|post\s?code)(?:\s+is)?\s*:?\s*)(?P<v>(?-i:\d{{5}}(?:-\d{{4}})?|{_UK_POSTCODE}|{_CA_POSTCODE}))(?![A-Za-z0-9])", 0.6, "v"),
        _Rule("DATE_TIME", rf"(?i:\b(?:born\s+on|birthday(?:\s+is)?(?:\s+on)?|b-?day(?:\s+is)?|date\s+of\s+birth(?:\s+is)?)\s*:?\s*(?:the\s+)?)(?P<v>(?-i:{_MONTH}\s+{_DAY}|{_DAY}(?:\s+of)?\s+{_MONTH}|[0-3]?\d[/.\-][0-3]?\d))\b", 0.6, "v"),
        *_form_rules(),
        *(
            _Rule(entity_type, rf"(?i:{cue})(?:\s+(?:number|no\.?|num\.?|#|is|was|:))*\s*:?\s*(?P<v>{_DOCUMENT_VALUE})(?![A-Za-z0-9])", 0.65, "v")
            for entity_type, cue in _DOCUMENT_CUES
        ),
    ]

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        return [
            result
            for result in super().analyze(text, entities, nlp_artifacts)
            if not _never_personal(text[result.start : result.end])
        ]


_SPACY_DROPPED = frozenset({"DATE_TIME"})
_HAS_LOWER_START = re.compile(r"^[a-z]")
_NOT_A_NAME = re.compile(r"[\d@/#:]")
_DIGIT = re.compile(r"\d")
# Words spaCy's small model takes for names or places in notes and forms but which never are:
# the calendar, salutations, and the labels and acronyms of the fields themselves.
_NEVER_PERSONAL = frozenset(
    "monday tuesday wednesday thursday friday saturday sunday january february march april may "
    "june july august september october november december today tomorrow yesterday "
    "sir madam mr mrs ms dr dear hi hello regards thanks "
    "ssn iban bic swift ip dob sms mms otp pin id email e-mail phone mobile tel fax name "
    "address date driver license licence passport login user username account customer client "
    "prospect lead upsell ticket order invoice receipt refund release version app api url "
    "card visa mastercard amex usd eur gbp cad aud inr jpy cny".split()
)
_WORDS = re.compile(r"[\w\-]+")


def _never_personal(value: str) -> bool:
    return all(word.lower() in _NEVER_PERSONAL for word in _WORDS.findall(value))


def keep_spacy_result(text: str, result: RecognizerResult) -> bool:
    """Whether a spaCy entity is worth reporting.

    spaCy's small model calls bare digit runs DATE ("1381234 0001"); dates with a year come
    from EnglishShapeRecognizer instead. Names, places and organisations are capitalised: a
    lowercase span ("gold", "free") is a common word, and a PERSON with digits or symbols
    is token noise. Weekdays, salutations and field labels ("Login IP", "SSN") never are
    personal data, nor is an organisation with digits in it ("Invoice ORD-8659716").
    """
    if result.entity_type in _SPACY_DROPPED:
        return False
    value = text[result.start : result.end]
    if _HAS_LOWER_START.match(value):
        return False
    if _never_personal(value):
        return False
    if result.entity_type in ("ORGANIZATION", "NRP") and _DIGIT.search(value):
        return False  # "Order ORD-8324", "Release 7.12": numbers spaCy took for a name
    return not (result.entity_type == "PERSON" and _NOT_A_NAME.search(value))


_PHONE_CANDIDATE = (
    r"(?<![\w+#/.\-])"
    r"(?P<number>(?:\+\d{1,3}(?:\s?\(0\))?[ .\-]?|00\d{1,3}[ .\-])?"
    r"(?:\(\d{1,5}\)[ .\-]?)?\d{1,12}(?:[ .\-]\d{1,8}){0,5})"
    r"(?:\s?(?:x|ext\.?|extension)\s?\d{1,6})?"
    r"(?![\w\-/]|\.\d)"
)
_IPV4_SHAPE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_PHONE_CUE = re.compile(
    r"(?i:phone|tel\b|telephone|mobile|cell|call|ring|reach|line|contact|number|no\.|sms|text|"
    r"whatsapp|fax|dial|landline)"
)
_PHONE_CUE_WINDOW = 32


class EnglishPhoneRecognizer(_RulesRecognizer):
    """Phone numbers as people write them in English: national or international, with
    parentheses, dots, dashes or spaces, and extensions ("x5679", "ext. 12").

    phonenumbers reports only numbers valid for the regions it scans, so a British or Australian
    number in an American note, or a number from an unassigned range, passes through. Here a
    formatted number of 9 to 15 digits is taken on its shape; a bare digit run, or one of 7 or 8
    digits, needs a cue such as "phone", "call" or "reach me" just before it.
    """

    RULES = [_Rule("PHONE_NUMBER", _PHONE_CANDIDATE, 0.4)]  # candidates; analyze decides

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if "PHONE_NUMBER" not in entities:
            return []
        results = []
        for match in self.RULES[0].regex.finditer(text):
            number = match.group("number")
            digits = sum(c.isdigit() for c in number)
            if digits < 7 or digits > 15 or _IPV4_SHAPE.fullmatch(number):
                continue
            formatted = number[0] in "+(" or not number.isdigit()
            cued = bool(_PHONE_CUE.search(text, max(0, match.start() - _PHONE_CUE_WINDOW), match.start()))
            if (formatted and digits >= 9) or cued:
                results.append(RecognizerResult("PHONE_NUMBER", match.start(), match.end(), 0.5 if cued else 0.4))
        return results
