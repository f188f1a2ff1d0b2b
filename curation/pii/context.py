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

from curation.pii.lexicon import COUNTRIES, NOT_NAMES, STREET_SUFFIXES_GLUED, STREET_TYPES, STREET_WORDS_BEFORE
from curation.pii.regex_recognizer import RegexRecognizer

UP = "A-ZÀ-ÖØ-ÞĀ-ž"  # Latin-1 and Latin Extended-A (Ł, Ś, Ž ... and their lower-case forms)
LOW = "a-zß-öø-ÿĀ-ž"
NAME = rf"[{UP}][{LOW}'’]+(?:-[{UP}]?[{LOW}'’]+)?"
PARTICLE = r"(?:van der|van den|van|von|de la|de|del|della|di|da|le|la|du|dos|das|bin|al|ter|den|der|mac|st\.)"
FULL = rf"{NAME}(?:[ \t](?:{PARTICLE}[ \t])?{NAME}){{0,2}}"
_MONTH_OR_DAY = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec|Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
PLACE = rf"(?:(?:St|Ste|Sta|Sto|Mt|Ft|Pt)\.?[ \t]+)?[{UP}][{LOW}'’]+(?:(?:[ \t]|-)(?:(?:on|upon|sur|am|an|de|del|la|le|les|the|in|by)(?:[ \t]|-)(?!{_MONTH_OR_DAY}))?[{UP}][{LOW}'’]+){{0,3}}"
_MONTHS_DAYS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
                "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
                "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}
PLACE_FEW = PLACE.removesuffix("{0,3}") + "{0,3}?"  # lazy: "Whitby" in "Whitby General Hospital"
assert PLACE_FEW.endswith("?")
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
         r"escalated to|handed (?:over )?to|transferred to|forwarded to|passed (?:it )?to|reassigned to|handled by|owned by|written by|edited by|forwarded by|signed|dictated by|nurse|guardian|mother|father|"
         r"wife|husband|son|daughter|spouse|partner|emergency contact|contact person|sender|recipient|attn)\b)")
_PLACE_WORDS = (r"(?i:\b(?:lives in|living in|lived in|based in|located in|resides in|residing in|resident of|"
                r"moved to|moving to|relocated to|born in|grew up in|travell?(?:ing|ed)? to|flew to|flying to|"
                r"visiting|offices? in|branch in|clinic in|hospital in|near|outside|suburb of|town of|city of|"
                r"village of|county of|province of|region of|lives with [\w ]{1,24} in|stationed in|works in|"
                r"trip to|back from|arrived (?:in|at)|drove (?:to|from|up from|down from)|driving (?:to|from)|"
                r"headed to|heading to|returned (?:to|from)|home in|weekend in|holiday in|vacation in|"
                r"stay(?:ing|ed)? in|hometown|hometown of|native of|commutes? from|transferred from [\w ]{1,24} in)\b)")
_US_STATES = (r"(?:AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|"
              r"NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY)")
_PLACE_OFFICE = (r"(?i:\b(?:the|our|their|your|its))[ \t]+(?P<v>" + PLACE + r")[ \t]+(?i:office|clinic|branch|site|store|hospital|campus|"
                 r"depot|warehouse|plant|factory|surgery|practice|centre|center|location|facility|pharmacy|shop|hq|headquarters|"
                 r"data ?cent(?:er|re)|airport)\b")
#: a name-bearing key in config/JSON/YAML/TOML: the value is a person when it looks like a name
_NAME_KEY = (r"(?im:^[ \t]*[\"']?(?:name|full[_-]?name|display[_-]?name|owner|author|maintainer|contact(?:[_-]?name)?|"
             r"manager|assignee|reporter|requester|customer(?:[_-]?name)?|patient(?:[_-]?name)?|first[_-]?name|"
             r"last[_-]?name|surname|given[_-]?name|family[_-]?name)[\"']?[ \t]*[:=][ \t]*[\"']?)")
#: postcodes of common layouts: 5 digits (DE/FR/IT/ES/US), 4 digits (AT/CH/BE/DK/NL), 12-345 (PL), 1234 AB (NL),
#: A1B 2C3 (CA), SW1A 1AA (UK)
_POSTCODE = r"(?:\d{5}|\d{4}(?: ?[A-Z]{2})?|\d{2}-\d{3}|[A-Z]\d[A-Z] ?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2})"


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


def proper_name_or_address(value: str, text: str, start: int, end: int) -> bool:
    """An address span (has a digit) stands on its structure; a bare place name must be a proper name."""
    return any(ch.isdigit() for ch in value) or proper_name(value, text, start, end)


_PLACEHOLDER_HEADS = {"PERSON", "EMAIL", "PHONE", "LOCATION", "CREDIT", "IBAN", "US", "IP", "URL", "DATE", "AWS",
                      "GITHUB", "SLACK", "GOOGLE", "STRIPE", "OPENAI", "API", "JWT", "PRIVATE", "PASSWORD", "SECRET",
                      "CONNECTION"}


def handle_ok(value: str, text: str, start: int, end: int) -> bool:
    """A chat handle / username: not a role, bot, broadcast word or code decorator."""
    low = value.lower().strip("@+%~&")
    bare = value.strip("@+%~&")
    if re.fullmatch(r"[A-Z_]+(?:_\d+|_[0-9a-f]{8})?", bare) and bare.split("_")[0] in _PLACEHOLDER_HEADS:
        return False  # our own placeholder (<PERSON>, <EMAIL_ADDRESS_1>) seen again by a rescan
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
                    r"urbanización|urbanizacion|cuesta|cañada|pasadizo|vial|travesía|travesia|c/|c\.(?= de)|"
                    r"ul\.|al\.|pl\.|os\.)")
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

    _LINE = re.compile(rf"^(?P<v>{NAME}(?: {NAME})?|[a-z][a-z0-9._-]{{1,24}})(?:[ \t]+\[[^\]\n]{{1,30}}\])?:[ \t]+\S+[ \t]+\S",
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
    street = rf"(?:[{UP}][\w'’.-]*[ \t]){{1,4}}\d{{1,5}}[a-zA-Z]?(?:/\d{{1,4}})?|\d{{1,5}}[a-zA-Z]?[ \t](?:[{UP}][\w'’.-]*[ \t]?){{1,4}}"
    titles = r"(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Sr|Sra|Srta|Sir|Dame|Rev|Fr|Capt|Herr|Frau|Mme|Mlle|Dott|Nurse|Doctor)"
    return [
        RegexRecognizer("PERSON", [
            (rf"\b{titles}\.?[ \t]+(?P<v>(?:{PARTICLE}[ \t])?{FULL})", 0.85),
            (rf"{_NAME_KEY}(?P<v>{FULL}(?:,[ \t]{NAME})?)(?=[\"',]?[ \t]*(?:[,}}]|$))", 0.75),
            (rf"^[ \t>]*{_GREETING}[ \t,]+(?P<v>{FULL})(?=[ \t]*(?:[,!:.\n–—-]|$))", 0.8),
            (rf"^[ \t>]*{_SIGNOFF}[ \t]*[,!.]?[ \t]*\n[ \t>]*(?P<v>{FULL})[ \t]*$", 0.8),
            (rf"\b(?:Thanks|Thank you|Cheers|Regards|Thx|Best)[ \t]*,?[ \t]+(?P<v>{FULL})[ \t]*[.!]?[ \t]*$", 0.75),
            (rf"{_ROLE}[ \t]*:?[ \t]+(?P<v>{FULL}(?:,[ \t]{NAME})?)", 0.7),
            (rf"(?P<v>{FULL}(?:,[ \t]{NAME})?)[ \t]*<[^<>@\s]+@[^<>\s]+>", 0.85),  # Name <mail@host>
            (rf"\"(?P<v>{FULL}(?:,[ \t]{NAME})?)\"[ \t]*<[^<>@\s]+@[^<>\s]+>", 0.85),
        ], group="v", validate=proper_name, name="slmforge_person_context"),
        RegexRecognizer("PERSON", [
            (r"<@[UW][A-Z0-9]{6,12}\|(?P<v>[^\W_][\w.-]{0,39})>", 0.85),  # Slack mention <@U0123ABC|handle>
            (r"\b(?:TODO|FIXME|XXX|HACK)\((?P<v>[A-Za-z][\w.-]{1,30})\)", 0.75),
            (r"(?<![\w.@/\"'`<])@(?P<v>[^\W\d_][\w.-]{0,30}[^\W_])(?![\w@/(-]|\.[^\W\d_])", 0.7),
            (r"^[ \t]*(?:\[[^\]\n]{1,40}\][ \t]*)?<[@+%~&]?(?P<v>[A-Za-z][\w.|-]{0,30})>", 0.8),
        ], group="v", validate=handle_ok, name="slmforge_person_handle"),
        ChatSpeakerRecognizer(),
        RegexRecognizer("LOCATION", [
            (rf"{_PLACE_WORDS}[ \t]+(?P<v>{PLACE})", 0.75),
            (_PLACE_OFFICE, 0.75),
            (rf"\b(?:in|from)[ \t]+(?P<v>{PLACE})(?=[ \t]*(?:[.;!?]|,[ \t]|$))", 0.35),
            (rf"(?<![\w-])(?P<v>{PLACE})-based\b", 0.75),
            (rf"\b(?P<v>{PLACE}),[ \t]+{_US_STATES}(?:[ \t]+\d{{5}}(?:-\d{{4}})?)?(?![\w-])", 0.75),  # Ouray, CO 81427
            (rf"\b(?P<v>{PLACE_FEW})[ \t]+(?:General Hospital|Hospital|Medical Cent(?:er|re)|Infirmary|County|Airport|"
             rf"Train Station|Station)\b", 0.6),
            (rf"\bin[ \t]+(?P<v>{PLACE})[ \t]+(?:on|last|next|this|yesterday|today|tomorrow|since|until|during|"
             rf"for the|over the)\b", 0.6),
            (rf"\bfrom[ \t]+(?P<v>{PLACE})[ \t]+to[ \t]+[{UP}]", 0.6),
            (rf"\bfrom[ \t]+{PLACE}[ \t]+to[ \t]+(?P<v>{PLACE})", 0.6),
            # Via Roma 12, 20121 Milano / 12 Rue X, 75001 Paris / Kerkstraat 7\n1234 AB Horssen (one span)
            (rf"(?P<v>\b(?:{street}),?[ \t]*\n?[ \t]*{_POSTCODE}[ \t]+{PLACE})", 0.75),
            (rf"^(?P<v>{_POSTCODE}[ \t]+{PLACE})[ \t]*$", 0.6),
        ], group="v", validate=proper_name_or_address, name="slmforge_location_context"),
        RegexRecognizer("LOCATION", [
            (rf"(?<![\w-])(?P<v>{COUNTRIES})(?![\w-])", 0.6),
        ], group="v", name="slmforge_location_country"),
    ]
