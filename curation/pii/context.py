"""Context-aware PERSON and LOCATION recognizers: the words around a capitalised token decide.

* title + name ("Dr. Mills", "Ms Chen"), greeting + name ("Hi Priya,"), sign-off + name ("Thanks, Tom",
  "Regards,\\nSonia"), role words + name ("assigned to", "spoke to", "Patient:", "cc"), ``TODO(name)``,
  ``@handle`` mentions, IRC ``<handle>`` and chat speaker lines ("Kelly [8 PM]: ...", two or more per text);
* street addresses (US/UK/AU numbers + street types, German/Dutch glued street names, French/Spanish/
  Italian/Portuguese street words) and place names after location words ("lives in", "based in",
  "at the X office"); a bare "in X." scores below the threshold (residual scan).
"""

from __future__ import annotations

import re

from presidio_analyzer import EntityRecognizer, RecognizerResult

from curation.pii.lexicon import NOT_NAMES, STREET_SUFFIXES_GLUED, STREET_TYPES, STREET_WORDS_BEFORE
from curation.pii.regex_recognizer import RegexRecognizer

UP = "A-ZÀ-ÖØ-Þ"
LOW = "a-zß-öø-ÿ"
NAME = rf"[{UP}][{LOW}'’]+(?:-[{UP}]?[{LOW}'’]+)?"
PARTICLE = r"(?:van der|van den|van|von|de la|de|del|della|di|da|le|la|du|dos|das|bin|al|ter|den|der|mac|st\.)"
FULL = rf"{NAME}(?:[ \t](?:{PARTICLE}[ \t])?{NAME}){{0,2}}"
PLACE = rf"[{UP}][{LOW}'’.]+(?:(?:[ \t]|-)(?:(?:on|upon|sur|am|an|de|del|la|le|les|the|in|by)(?:[ \t]|-))?[{UP}][{LOW}'’]+){{0,3}}"
_MONTHS_DAYS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
                "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
                "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}
_GREETING = (r"(?:Hi|Hello|Hey|Heya|Hiya|Dear|Morning|Good morning|Good afternoon|Good evening|Evening|Afternoon|"
             r"Greetings|Howdy|Bonjour|Hallo|Hola|Ciao|Salut|Moin)")
_SIGNOFF = (r"(?:Thanks|Thank you|Thanks again|Many thanks|Thx|Ta|Cheers|Regards|Best|Best regards|Kind regards|"
            r"Warm regards|Warmly|Sincerely|Yours(?: sincerely| truly| faithfully)?|Respectfully|Take care|"
            r"All the best|Talk soon|Speak soon|BR|KR|Mfg|Cordialement|Saludos|Grüße|Groeten|--)")
_ROLE = (r"(?i:\b(?:author|authors|maintainer|maintained by|reporter|reported by|assignee|assigned to|opened by|"
         r"created by|raised by|escalated by|approved by|reviewed by|requested by|submitted by|signed(?: off)? by|"
         r"spoke (?:to|with)|talked (?:to|with)|reply from|response from|message from|email from|call from|"
         r"voicemail from|ask|asked|ping|pinged|cc|cc'd|contact|contacted|patient|pt|next of kin|nok|seen by|"
         r"physician|attending|referred by|referring|caller|called|customer|on behalf of|courtesy of|thanks to|"
         r"handled by|owned by|written by|edited by|forwarded by|signed|dictated by|nurse|guardian|mother|father|"
         r"wife|husband|son|daughter|spouse|partner|emergency contact|contact person|sender|recipient|attn)\b)")
_PLACE_WORDS = (r"(?i:\b(?:lives in|living in|lived in|based in|located in|resides in|residing in|resident of|"
                r"moved to|moving to|relocated to|born in|grew up in|travell?(?:ing|ed)? to|flew to|flying to|"
                r"visiting|offices? in|branch in|clinic in|hospital in|near|outside|suburb of|town of|city of|"
                r"village of|county of|province of|region of|lives with [\w ]{1,24} in|stationed in|works in)\b)")
_PLACE_OFFICE = (r"(?i:\bat the)[ \t]+(?P<v>" + PLACE + r")[ \t]+(?i:office|clinic|branch|site|store|hospital|campus|"
                 r"depot|warehouse|plant|factory|surgery|practice|centre|center|location|facility|pharmacy|shop)\b")


def _tech_words() -> set[str]:
    from curation.pii.ner import TECH_WORDS

    return TECH_WORDS


def proper_name(value: str, text: str, start: int, end: int) -> bool:
    """A capitalised name: no field label, role, month, tech word, digit or all-caps word."""
    words = [w.strip(".,'’") for w in re.split(r"[ \t,]+", value) if w]
    if not words or any(ch.isdigit() for ch in value) or "\n" in value:
        return False
    first = words[0].lower()
    if first in NOT_NAMES or first in _MONTHS_DAYS or first in _tech_words():
        return False
    if any(w.lower() in NOT_NAMES for w in words[1:]) and len(words) > 1:
        return False
    return not any(w.isupper() and len(w) > 2 for w in words)


def handle_ok(value: str, text: str, start: int, end: int) -> bool:
    """A chat handle / username: not a role, bot, broadcast word or code decorator."""
    low = value.lower().strip("@+%~&")
    if low in NOT_NAMES or low in _tech_words() or re.search(r"bot\b|^ci$|^gh$|^svc|service|system|deploy", low):
        return False
    line_start = text.rfind("\n", 0, start) + 1
    before = text[line_start:start].strip()
    after = text[end:end + 1]
    if before in ("@", "") and text[start - 1:start] == "@" and (after in ("(", ".") or text[end:end + 1] in ("\n", "")):
        return False  # a decorator (@dataclass, @app.route) at the start of a line
    return not re.fullmatch(r"[\d._-]+", low)


def address_patterns() -> list[tuple[str, float]]:
    unit = r"(?:,? (?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Fl\.?|Floor|No\.?|Room|Rm\.?|Bldg\.?|Building|#) ?[\w-]{1,6})"
    street_name = rf"(?:[{UP}][\w'’.-]*\.? ){{1,4}}"
    town = rf"(?:[ \t]*,?[ \t]+(?:in[ \t]+)?(?P<also>[{UP}][{LOW}]+(?:[ -][{UP}][{LOW}]+){{0,2}})(?= *(?:[,.;\n]|$)))?"
    glued = rf"[{UP}][{LOW}]+(?:-[{UP}]?[{LOW}]+)*-?(?i:{STREET_SUFFIXES_GLUED})"
    number = r"\d{1,5}[a-zA-Z]?(?:[-/]\d{1,5}[a-zA-Z]?)?"
    before_words = (r"(?i:rue|boulevard|chemin|impasse|allée|allee|quai|viale|piazza|piazzale|corso|contrada|largo|"
                    r"vicolo|borgo|strada|calle|avenida|avda|paseo|ronda|carrer|passeig|rua|travessa|praça|praca|"
                    r"alameda|estrada|glorieta|pasaje|callejón|callejon|carretera|rambla|vía|traversa|lungomare|acceso|"
                    r"urbanización|urbanizacion|cuesta|cañada|pasadizo|vial|travesía|travesia|c/|c\.(?= de))")
    particles = r"(?:(?:de la|de los|de las|del|della|delle|dei|degli|des|du|de|la|le|les|los|las|di|da|dos|das|do|d'|l')\s?)*"
    romance_name = rf"{particles}[{UP}][\w'’-]+(?: (?:(?:de|del|la|di|da|e|y|dos|das) )?[{UP}][\w'’-]+){{0,3}}"
    labelled = (r"(?i:\b(?:address|addr|home address|home|residence|mailing address|billing address|shipping address|"
                r"lives at|living at|located at|resides at|site|premises|is at)\b)[ \t]*:?[ \t]+")
    return [
        # Address: / Home: / lives at <anything with a house number>
        (labelled + r"(?P<v>[^\n.;:]{0,60}?\d[^\n;:]{0,60}?)(?=\.?[ \t]*(?:\n|$)|\. |;)", 0.7),
        # 12 Main Street Apt 4, 391 Johnson Burg, 90/7 Griffith End
        (rf"(?<![\d/.:-])(?P<v>\b\d{{1,6}}[A-Za-z]?(?:/\d{{1,5}})?,? {street_name}(?:{STREET_TYPES}|End|Gate|Side)\b\.?{unit}?){town}", 0.85),
        # Flat 3, Pearson Court / Studio 7, 12 Mill Lane
        (rf"(?P<v>\b(?:Flat|Studio|Apartment|Unit|Suite) [\w-]{{1,5}},? (?:\d{{1,5}} )?{street_name}(?:{STREET_TYPES}|End)\b){town}", 0.85),
        # Schillerstraße 12, Kerkstraat 7a, Am Markt 3 is left to NER
        (rf"(?P<v>\b{glued}\.? {number}\b){town}", 0.8),
        (rf"\b{NAME} (?:Straße|Strasse|Weg|Allee|Platz|Gasse|Ring|Damm|Laan|Straat|Kade)\.? \d{{1,4}}[a-zA-Z]?\b", 0.8),
        # 12 rue Victor Hugo, Calle Mayor 5, Via Roma, 3, Avenida de José Mari Gracia 42 Puerta 1
        (rf"(?P<v>(?:\b\d{{1,4}}(?:bis|ter)?,? )?\b{before_words}\.? {romance_name}(?:,? (?:n\.? ?|nº ?|no\.? ?|s/n)?\d{{1,4}}[a-zA-Z]?)?"
         rf"(?: (?:Puerta|Piso|Esc\.?|Bajo|Portal|Int\.?|Scala|Piano) ?\w{{1,4}})*){town}", 0.8),
        (rf"(?P<v>(?:\b\d{{1,4}},? )\b(?i:place|route|via|plaza|camino|avenue|av\.|cours)\.? {romance_name}){town}", 0.75),
        (rf"(?P<v>\b(?i:place|route|via|plaza|camino|avenue|cours)\.? {romance_name},? \d{{1,4}}[a-zA-Z]?\b){town}", 0.75),
    ]


class ChatSpeakerRecognizer(EntityRecognizer):
    """Speaker names at the start of chat lines ("Kelly [8 PM]: text", "priya: text"), counted only in a
    text with at least two such lines (a chat transcript), never form labels ("Summary:", "Patient:")."""

    _LINE = re.compile(rf"^(?P<v>{NAME}|[a-z][a-z0-9._-]{{1,24}})(?:[ \t]+\[[^\]\n]{{1,30}}\])?:[ \t]+\S+[ \t]+\S",
                       re.MULTILINE)

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], name="slmforge_chat_speaker", supported_language="en")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: ANN001 (Presidio signature)
        found = [m for m in self._LINE.finditer(text)
                 if handle_ok(m.group("v"), text, m.start("v"), m.end("v")) and
                 (not m.group("v")[0].isupper() or proper_name(m.group("v"), text, m.start("v"), m.end("v")))]
        if len(found) < 2:
            return []
        return [RecognizerResult("PERSON", m.start("v"), m.end("v"), 0.75) for m in found]


def context_recognizers() -> list[EntityRecognizer]:
    titles = r"(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Sr|Sra|Srta|Sir|Dame|Rev|Fr|Capt|Herr|Frau|Mme|Mlle|Dott|Nurse|Doctor)"
    return [
        RegexRecognizer("PERSON", [
            (rf"\b{titles}\.?[ \t]+(?P<v>{FULL})", 0.85),
            (rf"^[ \t>]*{_GREETING}[ \t,]+(?P<v>{FULL})(?=[ \t]*(?:[,!:.\n–—-]|$))", 0.8),
            (rf"^[ \t>]*{_SIGNOFF}[ \t]*[,!.]?[ \t]*\n[ \t>]*(?P<v>{FULL})[ \t]*$", 0.8),
            (rf"\b(?:Thanks|Thank you|Cheers|Regards|Thx|Best)[ \t]*,?[ \t]+(?P<v>{FULL})[ \t]*[.!]?[ \t]*$", 0.75),
            (rf"{_ROLE}[ \t]*:?[ \t]+(?P<v>{FULL}(?:,[ \t]{NAME})?)", 0.7),
            (rf"(?P<v>{FULL}(?:,[ \t]{NAME})?)[ \t]*<[^<>@\s]+@[^<>\s]+>", 0.85),  # Name <mail@host>
            (rf"\"(?P<v>{FULL}(?:,[ \t]{NAME})?)\"[ \t]*<[^<>@\s]+@[^<>\s]+>", 0.85),
        ], group="v", validate=proper_name, name="slmforge_person_context"),
        RegexRecognizer("PERSON", [
            (r"\b(?:TODO|FIXME|XXX|HACK)\((?P<v>[A-Za-z][\w.-]{1,30})\)", 0.75),
            (r"(?<![\w.@/\"'`])@(?P<v>[^\W\d_][\w.-]{0,30}[^\W_])(?![\w@/(-]|\.[^\W\d_])", 0.7),
            (r"^[ \t]*(?:\[[^\]\n]{1,40}\][ \t]*)?<[@+%~&]?(?P<v>[A-Za-z][\w.|-]{0,30})>", 0.8),
        ], group="v", validate=handle_ok, name="slmforge_person_handle"),
        ChatSpeakerRecognizer(),
        RegexRecognizer("LOCATION", [
            (rf"{_PLACE_WORDS}[ \t]+(?P<v>{PLACE})", 0.75),
            (_PLACE_OFFICE, 0.75),
            (rf"\b(?:in|from)[ \t]+(?P<v>{PLACE})(?=[ \t]*(?:[.;!?]|,[ \t]|$))", 0.35),
        ], group="v", validate=proper_name, name="slmforge_location_context"),
    ]
