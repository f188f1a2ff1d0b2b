"""Credential recognizers: vendor key formats, credential values under key names in structured config
(JSON, YAML, .env, INI, code, HTTP headers), passwords written in prose, and an entropy check gated by
key-name context (a random-looking token next to a credential-like key name)."""

from __future__ import annotations

import math
import re
from collections import Counter

from presidio_analyzer import EntityRecognizer, RecognizerResult

from curation.pii.lexicon import NON_SECRET_KEY_TAIL
from curation.pii.recognizers import RegexRecognizer

#: key tokens that alone make a key a credential (value kept even when it is not random-looking)
STRONG = {"password", "passwd", "pwd", "pw", "pass", "passphrase", "passcode", "pin", "secret", "secrets", "token",
          "apikey", "credential", "credentials", "creds", "bearer", "privatekey", "secretkey", "accesskey",
          "authtoken", "accesstoken", "refreshtoken", "clientsecret", "dsn"}
#: (first, second) key-token pairs that form a credential name (api_key, private_key, client_secret ...)
PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("signing", "key"),
         ("encryption", "key"), ("master", "key"), ("license", "key"), ("app", "key"), ("session", "key"),
         ("client", "secret"), ("consumer", "secret"), ("auth", "key"), ("account", "key"), ("shared", "key"),
         ("subscription", "key"), ("signing", "secret"), ("webhook", "secret"), ("access", "token")}
#: key tokens that make a key a credential only when the value also looks random
WEAK = {"auth", "authorization", "key", "salt", "cookie", "session", "signature", "sig", "hmac", "nonce", "seed",
        "cert", "passkey", "otp", "totp", "mfa"}
PASSWORD_TOKENS = {"password", "passwd", "pwd", "pw", "pass", "passphrase", "passcode", "pin"}

_KV = re.compile(
    r"(?P<kq>[\"']?)(?P<key>[A-Za-z_$@][\w.$@-]{0,80})(?P=kq)[ \t]*(?::=|=>|=|:)[ \t]*"
    r"(?P<vq>[\"'`]?)(?P<v>(?:Bearer |Basic |Token |token )?[^\s\"'`,;<>{}()\[\]]+)", re.MULTILINE)
_NON_SECRET_TAIL = re.compile(NON_SECRET_KEY_TAIL + "$", re.IGNORECASE)
_REFERENCE = re.compile(
    r"^(?:\$\{?.*|\{\{.*|%\(.*|<.*>|\*+|x{3,}|\.{3}|_+|-+|#.*|os\.environ.*|env\..*|process\.env.*|none|null|nil|"
    r"true|false|yes|no|on|off|undefined|redacted|required|optional|str|string|int|bool|secret|password|token|"
    r"changeit|your[_-].*|my[_-].*|example.*|dummy.*|placeholder.*|todo|tbd|n/a|na|see|in|from|is|the|set|unset|"
    r"empty|disabled|enabled|default|auto|vault:.*|ref\+.*|arn:aws:.*|file:.*|https?://.*)$", re.IGNORECASE)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z_.]*$")


def key_tokens(key: str) -> list[str]:
    """'webhookSigningSecret' -> ['webhook', 'signing', 'secret']; 'AWS_SECRET_ACCESS_KEY' -> ['aws', 'secret', ...]."""
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key.lstrip("$@"))
    return [t for t in re.split(r"[\s_.\-]+", key.lower()) if t]


def credential_kind(key: str) -> str | None:
    """'strong', 'weak' or None for a config key name (ids, names, paths, TTLs ... are never credentials)."""
    if _NON_SECRET_TAIL.search(key.replace("-", "_")):
        return None
    toks = key_tokens(key)
    if not toks:
        return None
    if any(t in STRONG for t in toks) or any(p in PAIRS for p in zip(toks, toks[1:])):
        return "strong"
    if any(t in WEAK for t in toks) or toks[-1].endswith(("token", "secret", "password", "passwd")):
        return "weak" if not toks[-1].endswith(("token", "secret", "password", "passwd")) else "strong"
    return None


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def random_looking(value: str) -> bool:
    """A generated token: long enough, several character classes or hex, and high entropy for its length."""
    v = value
    if len(v) < 12 or " " in v:
        return False
    classes = sum(bool(re.search(p, v)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^A-Za-z0-9]"))
    if re.fullmatch(r"[0-9a-fA-F]+", v):
        return len(v) >= 16 and entropy(v) >= 3.0 and bool(re.search(r"\d", v)) and bool(re.search(r"[a-fA-F]", v))
    return classes >= 2 and bool(re.search(r"\d", v)) and entropy(v) >= min(3.5, math.log2(len(v)) - 0.5)


def password_like(value: str) -> bool:
    """A password written in prose: letters plus digits/symbols, or long mixed case; not a plain word."""
    v = value
    if len(v) < 6 or len(v) > 64 or _REFERENCE.match(v) or "://" in v:
        return False
    letters = bool(re.search(r"[A-Za-z]", v))
    digits_or_symbols = bool(re.search(r"[\d!@#$%^&*?+=~]", v))
    mixed = bool(re.search(r"[a-z]", v)) and bool(re.search(r"[A-Z]", v[1:]))
    if re.fullmatch(r"v?\d+(?:\.\d+)+(?:-\w+)?", v) or re.fullmatch(r"[\w-]+\.(?:py|js|ts|go|rs|md|txt|yaml|yml|json|sh)", v):
        return False  # versions, file names
    return letters and (digits_or_symbols or (mixed and len(v) >= 8))


class KeyValueSecretRecognizer(EntityRecognizer):
    """Values under credential key names in JSON/YAML/.env/INI/code/headers: PASSWORD for password-like keys,
    SECRET otherwise. Strong key names keep any literal value; weak ones (auth, key, salt, session ...) only a
    random-looking value (the entropy gate). Unquoted identifier-like values score below the threshold (a
    residual-scan span): in code they are variables, in YAML they may be words used as passwords."""

    def __init__(self, entity: str) -> None:
        super().__init__(supported_entities=[entity], name=f"slmforge_kv_{entity.lower()}", supported_language="en")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: ANN001 (Presidio signature)
        want = self.supported_entities[0]
        out = []
        for m in _KV.finditer(text):
            key, value, quoted = m.group("key"), m.group("v"), bool(m.group("vq"))
            kind = credential_kind(key)
            if kind is None:
                continue
            start = m.start("v")
            scheme = re.match(r"(?:Bearer|Basic|Token|token) ", value)
            if scheme:
                value, start = value[scheme.end():], start + scheme.end()
            value = value.rstrip(".")
            end = start + len(value)
            if end < len(text) and text[end] == "(":
                continue  # a call: password=get_password()
            is_pw = any(t in PASSWORD_TOKENS for t in key_tokens(key))
            entity = "PASSWORD" if is_pw else "SECRET"
            if entity != want or _REFERENCE.match(value) or value.lower() == key.lower():
                continue
            if value.isdigit():
                if "pin" in key_tokens(key) and 4 <= len(value) <= 8:
                    out.append(RecognizerResult(entity, start, end, 0.85))
                continue
            if kind == "weak" and not random_looking(value):
                continue
            score = 0.9
            if len(value) < 6:
                continue
            if not quoted and _IDENTIFIER.match(value) and not random_looking(value):
                score = 0.4  # a variable in code, or a word used as a password in YAML: residual scan decides
            out.append(RecognizerResult(entity, start, end, score))
        return out


_PROSE_PW = (r"(?i:\b(?:password|passwd|passcode|passphrase|pass phrase|pw|pwd)\b)(?:[ \t]+(?:is|was|(?:for|of|on)(?:[ \t]+[\w@.-]+){1,4}[ \t]+is|"
             r"set to|changed to|now|reset to|will be))?[ \t]*[:=]?[ \t]*[\"'`]?(?P<v>[^\s\"'`]{6,64}?)[\"'`]?(?=[.,;:)]?(?:\s|$))")
_PROSE_PIN = r"(?i:\bpin(?: code| number)?\b)(?:[ \t]+(?:is|was))?[ \t]*[:=]?[ \t]*(?P<v>\d{4,8})\b"
_LOGIN_PAIR = (r"(?i:\b(?:login|log-in|credentials?|creds|user(?:name)?[ \t]*/[ \t]*pass(?:word)?)\b)[^\n]{0,24}?"
               r"\b[\w.@-]{2,40}[ \t]*/[ \t]*(?P<v>[^\s\"'`]{6,64}?)(?=[.,;:)]?(?:\s|$))")
_NEAR_KEYWORD = (r"(?i:\b(?:token|api[ _-]?key|secret|access[ _-]?key|private[ _-]?key|bearer|auth(?:orization)?|"
                 r"signing[ _-]?key|webhook[ _-]?secret|session[ _-]?key|credentials?)\b)[^\n]{0,24}?"
                 r"(?<![\w/+=-])(?P<v>[A-Za-z0-9_+/=.-]{16,200})(?![\w/+=-])")

_RANDOM_OK = lambda v, t, s, e: random_looking(v.rstrip("."))  # noqa: E731


def secret_recognizers() -> list[EntityRecognizer]:
    """Recognizers for credentials: cloud keys, tokens, private keys, passwords, connection strings, config secrets."""
    from curation.pii.recognizers import secret_value

    return [
        RegexRecognizer("AWS_ACCESS_KEY", [(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ABIA|ACCA)[0-9A-Z]{16}\b", 0.95)]),
        RegexRecognizer("AWS_SECRET_KEY", [(r"(?i)aws.{0,20}?(?:secret|sk).{0,20}?[\"']?\s*[:=]\s*[\"']?(?P<v>[A-Za-z0-9/+]{40})\b", 0.95)], group="v"),
        RegexRecognizer("GITHUB_TOKEN", [(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b", 0.95)]),
        RegexRecognizer("SLACK_TOKEN", [(r"\bxox[abposre]-[A-Za-z0-9-]{10,}\b", 0.95), (r"\bxapp-\d-[A-Za-z0-9-]{10,}\b", 0.95),
                                        (r"https://hooks\.slack\.com/services/[A-Za-z0-9/]+", 0.95)]),
        RegexRecognizer("GOOGLE_API_KEY", [(r"\bAIza[0-9A-Za-z_-]{35}\b", 0.95), (r"\bya29\.[0-9A-Za-z_-]{20,}", 0.9)]),
        RegexRecognizer("STRIPE_KEY", [(r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}\b", 0.95), (r"\bwhsec_[0-9A-Za-z]{24,}\b", 0.95)]),
        RegexRecognizer("OPENAI_KEY", [(r"\bsk-(?:proj-|ant-(?:api\d\d-)?|svcacct-)?[A-Za-z0-9_-]{20,}\b", 0.9)]),
        RegexRecognizer("API_KEY", [
            (r"\bglpat-[0-9A-Za-z_-]{20,}\b", 0.95),  # GitLab
            (r"\bSG\.[0-9A-Za-z_-]{16,32}\.[0-9A-Za-z_-]{16,64}\b", 0.95),  # SendGrid
            (r"\bnpm_[0-9A-Za-z]{36}\b", 0.95), (r"\bhf_[0-9A-Za-z]{30,40}\b", 0.9),  # npm, Hugging Face
            (r"\bpypi-AgE[0-9A-Za-z_-]{50,}", 0.95), (r"\bshp(?:at|ss|ca|pa)_[0-9a-fA-F]{32}\b", 0.95),  # PyPI, Shopify
            (r"\bdop_v1_[0-9a-f]{64}\b", 0.95), (r"\bdckr_pat_[0-9A-Za-z_-]{20,}\b", 0.95),  # DigitalOcean, Docker
            (r"\bsq0(?:atp|csp)-[0-9A-Za-z_-]{22,}\b", 0.95), (r"\b(?:gsk|r8|lin_api)_[0-9A-Za-z]{20,}\b", 0.9),
            (r"\bATATT3[0-9A-Za-z_=-]{20,}\b", 0.95), (r"\bAGE-SECRET-KEY-1[0-9A-Z]{58}\b", 0.95),
            (r"(?i)\bAccountKey=(?P<v>[0-9A-Za-z+/=]{40,})", 0.95),  # Azure storage connection string
        ]),
        RegexRecognizer("JWT", [(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b", 0.95)]),
        RegexRecognizer("PRIVATE_KEY", [(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----", 0.99)]),
        RegexRecognizer("CONNECTION_STRING", [(r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@\"']+:[^\s@/\"']{3,}@[^\s\"'<>]+", 0.95)],
                        validate=lambda v, t, s, e: secret_value(v.split("://", 1)[1].split(":", 1)[1].split("@", 1)[0], t, s, e)),
        KeyValueSecretRecognizer("PASSWORD"),
        RegexRecognizer("PASSWORD", [(_PROSE_PW, 0.85), (_PROSE_PIN, 0.8), (_LOGIN_PAIR, 0.85)], group="v",
                        validate=lambda v, t, s, e: v.isdigit() or password_like(v)),
        KeyValueSecretRecognizer("SECRET"),
        RegexRecognizer("SECRET", [(_NEAR_KEYWORD, 0.8)], group="v", validate=_RANDOM_OK),
    ]
