"""Regex recognizers tuned for technical text (tickets, logs, configs, code).

Each recognizer is a Presidio ``EntityRecognizer`` of its own; matching is plain ``re`` with an
optional validator and an optional context window, so no lemmatizer is needed.
"""

from __future__ import annotations

import re

from presidio_analyzer import EntityRecognizer

from curation.pii.regex_recognizer import RegexRecognizer, Validator  # noqa: F401 (also imported from here)


# ---------------------------------------------------------------- validators
def _not_in_identifier(value: str, text: str, start: int, end: int) -> bool:
    """Reject matches glued to identifier characters (part of a hash, path, version or id)."""
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or before in "_/\\.-#:" or after.isalnum() or after in "_")


def _ipv4(value: str, text: str, start: int, end: int) -> bool:
    parts = value.split(".")
    if any(int(p) > 255 or (len(p) > 1 and p[0] == "0") for p in parts):
        return False
    if value.startswith(("0.", "127.", "255.")) or value.endswith(".0.0"):
        return False  # unspecified, loopback, netmasks
    before = text[max(0, start - 12):start].lower()
    if re.search(r"(v|version|ver\.?|release|==|>=|<=|~=|@)\s*$", before):
        return False  # a version number
    after = text[end:end + 1]
    return not (after.isalnum() or after in "._-") and not (start and text[start - 1] in "._-/v")


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def _credit_card(value: str, text: str, start: int, end: int) -> bool:
    digits = re.sub(r"\D", "", value)
    return 12 <= len(digits) <= 19 and _luhn(digits) and _not_in_identifier(value, text, start, end)


def _iban(value: str, text: str, start: int, end: int) -> bool:
    s = value.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    num = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(num) % 97 == 1


def _ssn(value: str, text: str, start: int, end: int) -> bool:
    d = re.sub(r"\D", "", value)
    if len(d) != 9 or d[:3] in ("000", "666") or d[0] == "9" or d[3:5] == "00" or d[5:] == "0000":
        return False
    return _not_in_identifier(value, text, start, end)


def _phone(value: str, text: str, start: int, end: int) -> bool:
    digits = re.sub(r"\D", "", value.split("x")[0])
    if not 7 <= len(digits) <= 15 or len(set(digits)) < 3:
        return False
    return _not_in_identifier(value, text, start, end)


_PLACEHOLDER = re.compile(
    r"^(\$\{?.*|<.*>|\{\{.*\}\}|%\(.*|\*+|x+|none|null|nil|true|false|os\.environ.*|env\(.*|getenv.*|"
    r"process\.env.*|\.\.\.|redacted|required|optional|str|string|secret|password|your[_-].*|\[.*\])$",
    re.IGNORECASE,
)


def secret_value(value: str, text: str, start: int, end: int) -> bool:
    v = value.strip("\"'`")
    return len(v) >= 6 and not _PLACEHOLDER.match(v) and not re.fullmatch(r"[a-z_]+\(.*", v)


def _url(value: str, text: str, start: int, end: int) -> bool:
    return len(value) > 8 and not re.search(r"://(localhost|127\.0\.0\.1|0\.0\.0\.0|example\.(com|org))\b", value)


def _date(value: str, text: str, start: int, end: int) -> bool:
    return _not_in_identifier(value, text, start, end)


def _nanp(value: str, text: str, start: int, end: int) -> bool:
    """Digits-only North American numbers: area code and exchange start with 2-9 (epochs and ids mostly fail)."""
    d = re.sub(r"\D", "", value)
    d = d[1:] if len(d) == 11 and d[0] == "1" else d
    return len(d) == 10 and d[0] in "23456789" and d[3] in "23456789" and d[1:3] != "11" and \
        _phone(value, text, start, end)


def _clock(value: str, text: str, start: int, end: int) -> bool:
    """A time of day, not part of a duration/ratio/file:line:col or a version."""
    before = text[max(0, start - 1):start]
    after = text[end:end + 1]
    if before in (":", ".", "/", "-") or (before and before.isalnum()) or after in (":",) or (after and after.isalnum()):
        return False
    return not re.search(r"(?i)(?:took|elapsed|duration|uptime|for|ratio|line)\s*$", text[max(0, start - 12):start])


# ---------------------------------------------------------------- patterns
MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
MONTH_ANYCASE = r"(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)"
WEEKDAY = r"(?:Mon|Tue|Tues|Wed|Thu|Thur|Thurs|Fri|Sat|Sun)(?:day|nesday|sday|urday)?\.?"
DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_URL_TAIL = r"[^\s<>\"'`)\]}]*[^\s<>\"'`)\]},.;:!?]"
_AMPM = r"(?:[AaPp]\.[Mm]\.|[AaPp][Mm])"
_PHONE_WORDS = r"phone|tel\b|telephone|call|mobile|cell|fax|contact|reach|sms|whatsapp|dial|callback|number|\bph\b|\bmob\b"


def pii_recognizers() -> list[EntityRecognizer]:
    """Pattern recognizers for the structured PII types (no NER needed); person/place context in context.py."""
    from curation.pii.context import address_patterns

    return [
        RegexRecognizer("EMAIL_ADDRESS", [(r"\b[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b", 0.9)]),
        RegexRecognizer("URL", [(r"\b(?:https?|ftp)://" + _URL_TAIL, 0.8), (r"(?<![\w.@/])www\." + _URL_TAIL, 0.8)], validate=_url),
        RegexRecognizer("IP_ADDRESS", [
            (r"\b\d{1,3}(?:\.\d{1,3}){3}\b", 0.85),
            (r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?=:\d{1,5}\b|[^\w:]|$)", 0.85),  # may end in :port
            (r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}(?![\w:])", 0.8),
        ], validate=lambda v, t, s, e: _ipv4(v, t, s, e) if "." in v else True),
        RegexRecognizer("CREDIT_CARD", [
            (r"\b(?:\d{4}[ -]){3}\d{1,7}\b", 0.9),
            (r"\b\d{4}([ -])\d{6}\1\d{4,5}\b", 0.9),  # Amex 4-6-5, Diners 4-6-4
            (r"\b\d{13,19}\b", 0.6), (r"\b\d{12}\b", 0.3),
        ], validate=_credit_card, context=r"card|credit|visa|master|amex|maestro|payment|paid|pay\b|cc\b|pan\b|charge",
            context_score=0.9),
        RegexRecognizer("IBAN_CODE", [
            (r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", 0.9),
            (r"\b[A-Z]{2}\d{2}[ -]?[A-Z0-9]{1,30}(?:[ -][A-Z0-9]{1,8}){0,8}\b", 0.9),  # other groupings, dashes
        ], validate=_iban),
        RegexRecognizer("US_SSN", [(r"\b\d{3}-\d{2}-\d{4}\b", 0.85), (r"\b\d{3} \d{2} \d{4}\b", 0.3), (r"\b\d{9}\b", 0.05)],
                        validate=_ssn, context=r"ssn|social security|\bsocial\b|taxpayer", context_score=0.9),
        RegexRecognizer("PHONE_NUMBER", [
            (r"(?<![\w+])\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?\b", 0.8),
            (r"(?<![\w+])00\d{1,3}[ .-]\(?\d{1,4}\)?(?:[ .-]?\d{2,8}){1,3}\b", 0.7),
            (r"(?<![\w(])(?:001[ .-])?\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?\b", 0.85),
            (r"(?<![\w.+-])(?:001[ .-]|1[ .-])?\d{3}([ .-])\d{3}\1\d{4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?\b", 0.75),
            (r"(?<![\w.+-])\(0\d{1,4}\)\s?\d{2,4}(?:[ -]?\d{2,4}){1,2}\b", 0.75),
            (r"(?<![\w.+-])0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}\b", 0.6),
            (r"(?<![\w.+-])0\d{3,4}-\d{5,7}\b", 0.6),
            (r"(?<![\w.+-])\d{3}[ .-]\d{4}\b", 0.2),
        ], validate=_phone, context=_PHONE_WORDS, context_score=0.85),
        RegexRecognizer("PHONE_NUMBER", [(r"(?<![\w.+-])1?\d{10}(?:x\d{1,5})?\b", 0.4)], validate=_nanp,
                        context=_PHONE_WORDS, context_score=0.85, name="slmforge_phone_number_digits"),
        RegexRecognizer("DATE_TIME", [
            (r"\b(?:19|20)\d{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?:[T ][0-2]\d:[0-5]\d(?::[0-5]\d(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b", 0.75),
            (r"\b(?:19|20)\d{2}/(?:0?[1-9]|1[0-2])/" + DAY + r"(?:[T ][0-2]\d:[0-5]\d(?::[0-5]\d)?)?\b", 0.75),
            (r"\b(?:0?[1-9]|1[0-2])/" + DAY + r"/(?:19|20)?\d{2}\b", 0.75),
            (r"\b" + DAY + r"/(?:0?[1-9]|1[0-2])/(?:19|20)\d{2}\b", 0.75),
            (r"\b" + DAY + r"\.(?:0?[1-9]|1[0-2])\.(?:19|20)\d{2}\b", 0.7),
            (r"\b" + DAY + r"[-/ ]" + MONTH_ANYCASE + r"[a-z]*\.?[-/ ](?:19|20)?\d{2}(?::\d{2}:\d{2}:\d{2}(?: [+-]\d{4})?)?(?![\w-])", 0.85),
            (r"(?:\b" + WEEKDAY + r",? )?\b" + MONTH + r"\.? " + DAY + r"(?:st|nd|rd|th)?,? (?:19|20)\d{2}\b", 0.85),
            (r"(?:\b" + WEEKDAY + r",? )?\b" + DAY + r"(?:st|nd|rd|th)? (?:of )?" + MONTH + r"\.?,? (?:19|20)\d{2}\b", 0.85),
            (r"\b" + MONTH + r"\.? {1,2}" + DAY + r"(?: \d{2}:\d{2}:\d{2})?(?:st|nd|rd|th)?\b", 0.6),
            (r"\b" + WEEKDAY + r",? " + DAY + r"(?:st|nd|rd|th)? " + MONTH + r"\b", 0.75),
            (r"\b" + DAY + r"(?:st|nd|rd|th)? (?:of )?" + MONTH + r"\b", 0.6),
            (r"\b(?:0?[1-9]|1[0-2])(?::[0-5]\d)? ?" + _AMPM + r"(?![\w])", 0.75),
        ], validate=_date),
        RegexRecognizer("DATE_TIME", [
            (r"\b(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?\b", 0.45),
        ], validate=_clock, context=r"\bat\b|\bby\b|around|until|before|after|from|since|o'?clock|\[|\bam\b|\bpm\b",
            context_score=0.75, window=12, name="slmforge_date_time_clock"),
        RegexRecognizer("LOCATION", address_patterns(), group="v"),
    ]
