"""Word lists the context recognizers use: general English/technical vocabulary, never values of a test set.

* ``NOT_NAMES``: capitalised words that follow a greeting, a role word or start a chat-like line but are
  not people (form-field labels, roles, pronouns, common words).
* ``STREET_TYPES``: street suffixes (USPS Publication 28 common suffixes, UK and Irish road types) and the
  leading street words of French, Spanish, Italian, Portuguese and Catalan addresses; ``STREET_SUFFIXES_GLUED``:
  German and Dutch street-name endings written as one word ("Schillerstraße", "Kerkstraat").
* ``CREDENTIAL_KEYS``: key-name fragments that make a config value a credential.
"""

from __future__ import annotations

NOT_NAMES = frozenset("""
all everyone everybody team folks guys there again both you sir madam madame customer customers client clients
support admin admins ops devops sre dev devs qa it hr legal security infra platform sales billing finance
management manager managers owner owners user users member members colleague colleagues friend friends
summary subject from to cc bcc date time notes note status priority reporter assignee component build version
release patient pt home address phone tel email mail dob ssn physician doctor error warning warn info debug
trace fatal critical host port name description title type result reason action step cause fix impact resolution
environment env labels label tags tag sprint epic story bug task question answer example output input usage
returns args parameters raises todo fixme hint tip important caution update edit plan assessment subjective
objective allergies medications medication diagnosis signed attending location site ref reference ticket agent
bot system assistant operator moderator server service services api app application database db cluster node
pipeline job jobs worker workers the a an this that these those it we they he she i me my our your their his her
hello hi hey dear thanks thank cheers regards best kind warm morning afternoon evening night today tomorrow
yesterday monday tuesday wednesday thursday friday saturday sunday please sorry ok okay yes no fyi btw update
next previous new old draft final internal external general random announcements channel here
kin contact contacts caller callers family parent parents mother father daughter son wife husband partner
nurse nurses staff department office clinic hospital ward unit room floor building
mr mrs ms miss mx dr prof sr sra srta sir dame rev fr capt herr frau mme mlle dott doctor production staging
""".split())

STREET_TYPES = (
    "Street|St|Avenue|Ave|Av|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|Circle|Cir|"
    "Parkway|Pkwy|Square|Sq|Highway|Hwy|Trail|Trl|Alley|Aly|Crossing|Xing|Loop|Plaza|Plz|Ridge|Rdg|Park|Path|Pike|"
    "Row|Walk|Close|Crescent|Cres|Gardens|Gdns|Grove|Gr|Mews|Hill|Hills|Green|Vale|View|Rise|Gate|Wharf|Quay|Yard|"
    "Heights|Hts|Harbor|Harbour|Hbr|Haven|Isle|Junction|Jct|Key|Knoll|Knolls|Lake|Lakes|Landing|Lndg|Lodge|Manor|"
    "Meadow|Meadows|Mill|Mills|Mission|Mount|Mountain|Orchard|Oval|Pass|Passage|Pine|Pines|Point|Pt|Port|Ports|"
    "Prairie|Ranch|Rapids|Rest|River|Run|Shoal|Shoals|Shore|Shores|Spring|Springs|Spur|Station|Stravenue|Stream|"
    "Summit|Track|Trace|Trafficway|Tunnel|Turnpike|Underpass|Union|Valley|Viaduct|Villa|Villas|Village|Ville|"
    "Vista|Well|Wells|Bay|Bend|Bluff|Bluffs|Bottom|Branch|Bridge|Brook|Brooks|Burg|Burgs|Bypass|Camp|Canyon|Cape|"
    "Causeway|Center|Centre|Cliff|Cliffs|Club|Common|Commons|Corner|Corners|Course|Courts|Cove|Coves|Creek|Crest|"
    "Crossroad|Curve|Dale|Dam|Divide|Drives|Estate|Estates|Expressway|Extension|Falls|Ferry|Field|Fields|Flat|"
    "Flats|Ford|Fords|Forest|Forge|Forges|Fork|Forks|Fort|Freeway|Garden|Gateway|Glen|Glens|Greens|Groves|Hollow|"
    "Inlet|Island|Islands|Lights|Light|Locks|Lock|Motorway|Neck|Overpass|Parks|Plain|Plains|Radial|Ramp|Roads|"
    "Route|Skyway|Squares|Streets|Throughway|Trailer|Views|Ways|Wall|Drive|Esplanade|Parade|Promenade|Broadway"
)
STREET_WORDS_BEFORE = (
    "rue|avenue|boulevard|bd|chemin|impasse|allée|allee|place|quai|route|cours|via|viale|piazza|piazzale|corso|"
    "contrada|largo|vicolo|borgo|strada|calle|avenida|avda|plaza|paseo|camino|ronda|carrer|passeig|rua|travessa|"
    "praça|praca|alameda|estrada|glorieta|pasaje|callejón|callejon|carretera|rambla|vía|traversa|lungomare"
)
STREET_SUFFIXES_GLUED = (
    "straße|strasse|str\\.|weg|allee|platz|gasse|ring|damm|ufer|chaussee|steig|pfad|markt|graben|"
    "baan|laan|straat|gracht|plein|kade|dijk|steeg|singel|hof|dreef|wal|vej|gatan|gata|vägen|veien|gade"
)

CREDENTIAL_KEYS = (
    r"pass(?:word|wd|phrase|code)?|pwd|pw|pin|secret|token|api[_.-]?key|apikey|access[_.-]?key|private[_.-]?key|"
    r"client[_.-]?secret|signing[_.-]?key|auth|authorization|credentials?|cred|session[_.-]?key|cookie[_.-]?secret|"
    r"webhook[_.-]?secret|encryption[_.-]?key|master[_.-]?key|license[_.-]?key|secret[_.-]?key|app[_.-]?key|"
    r"consumer[_.-]?secret|bearer|salt|dsn|conn(?:ection)?[_.-]?string"
)
#: key-name endings that make a credential-looking key a harmless one (ids, names, lengths, paths, flags)
NON_SECRET_KEY_TAIL = (
    r"(?:[_.-]?(?:id|ids|name|names|type|types|file|files|path|paths|dir|url|uri|endpoint|host|ttl|ttl_seconds|"
    r"expiry|expires|expires_at|expiration|timeout|length|len|size|count|version|header|field|prefix|env|var|"
    r"enabled|required|policy|rotation|days|hours|seconds|minutes|min|max|format|algorithm|alg|scope|scopes|"
    r"hint|label|source|provider|store|backend|mode|strategy|limit|regex|pattern|location|region|index|kind))"
)

#: sovereign states and common territories (English short names; ambiguous first names such as Chad and Jordan
#: left out), longest first so "Guinea-Bissau" wins over "Guinea"
_COUNTRY_NAMES = """
Afghanistan|Albania|Algeria|Andorra|Angola|Antigua and Barbuda|Argentina|Armenia|Australia|Austria|Azerbaijan|
Bahamas|Bahrain|Bangladesh|Barbados|Belarus|Belgium|Belize|Benin|Bhutan|Bolivia|Bosnia and Herzegovina|Botswana|
Brazil|Brunei|Bulgaria|Burkina Faso|Burundi|Cabo Verde|Cape Verde|Cambodia|Cameroon|Canada|Central African Republic|
Chile|China|Colombia|Comoros|Congo|Costa Rica|Croatia|Cuba|Cyprus|Czechia|Czech Republic|Denmark|Djibouti|Dominica|
Dominican Republic|Ecuador|Egypt|El Salvador|Equatorial Guinea|Eritrea|Estonia|Eswatini|Ethiopia|Fiji|Finland|
France|Gabon|Gambia|Germany|Ghana|Greece|Grenada|Guatemala|Guinea-Bissau|Guinea|Guyana|Haiti|Honduras|Hungary|
Iceland|India|Indonesia|Iran|Iraq|Ireland|Israel|Italy|Ivory Coast|Jamaica|Japan|Kazakhstan|Kenya|Kiribati|Kosovo|
Kuwait|Kyrgyzstan|Laos|Latvia|Lebanon|Lesotho|Liberia|Libya|Liechtenstein|Lithuania|Luxembourg|Madagascar|Malawi|
Malaysia|Maldives|Mali|Malta|Marshall Islands|Mauritania|Mauritius|Mexico|Micronesia|Moldova|Monaco|Mongolia|
Montenegro|Morocco|Mozambique|Myanmar|Namibia|Nauru|Nepal|Netherlands|New Zealand|Nicaragua|Nigeria|Niger|
North Korea|North Macedonia|Norway|Oman|Pakistan|Palau|Palestine|Panama|Papua New Guinea|Paraguay|Peru|Philippines|
Poland|Portugal|Qatar|Romania|Russia|Rwanda|Saint Kitts and Nevis|Saint Lucia|Samoa|San Marino|Saudi Arabia|Senegal|
Serbia|Seychelles|Sierra Leone|Singapore|Slovakia|Slovenia|Solomon Islands|Somalia|South Africa|South Korea|
South Sudan|Spain|Sri Lanka|Sudan|Suriname|Sweden|Switzerland|Syria|Taiwan|Tajikistan|Tanzania|Thailand|Timor-Leste|
Togo|Tonga|Trinidad and Tobago|Tunisia|Turkey|Türkiye|Turkmenistan|Tuvalu|Uganda|Ukraine|United Arab Emirates|
United Kingdom|United States of America|United States|Uruguay|Uzbekistan|Vanuatu|Vatican City|Venezuela|Vietnam|
Viet Nam|Yemen|Zambia|Zimbabwe|Hong Kong|Macau|Puerto Rico|Greenland|Gibraltar|Bermuda|Faroe Islands|Guam|
Western Sahara|Scotland|Wales|England|Northern Ireland|Korea|Holland|Kenia|Deutschland|Italia|España|Österreich|
Schweiz|Suisse|Nederland|Polska|Brasil|México|Perú
"""
COUNTRIES = "(?:" + "|".join(sorted((c.strip() for c in _COUNTRY_NAMES.replace("\n", "").split("|") if c.strip()),
                                     key=len, reverse=True)) + ")"
