"""HOLDOUT labelled PII set: templates, styles and value formats written before any tuning and never
looked at while tuning the recognizers (tune on bench/pii/dev_set.py). Report both.

python bench/pii/holdout_set.py --n 600 --seed 11 --out /tmp/pii_holdout.jsonl
"""

from __future__ import annotations

import argparse
import uuid

from labelled import HEX, UPPER_DIGITS, generate, token, write_jsonl

LOCALES = ["en_US", "en_GB", "en_AU", "fr_FR", "nl_NL", "it_IT"]
TOWNS = ["Tewkesbury", "Hebden Bridge", "Chagrin Falls", "Marfa", "Bexhill", "Ely", "Moab", "Kinsale", "Ballarat",
         "Zandvoort", "Bourton-on-the-Water", "Lyme Regis", "Taos", "Woodstock", "Arles", "Bergamo"]
TITLES = ["Dr.", "Dr", "Mr.", "Mrs", "Ms.", "Prof.", "Nurse"]


# ------------------------------------------------------------------ values (holdout formats)
def person(f, r):
    return ("PERSON", f"{f.first_name()} {f.last_name()}")


def first(f, r):
    return ("PERSON", f.first_name())


def phone(f, r):
    style = r.randrange(4)
    if style == 0:
        return ("PHONE_NUMBER", f.phone_number())
    if style == 1:  # no separators at all
        return ("PHONE_NUMBER", f"{r.randint(201, 989)}{r.randint(200, 999)}{r.randint(1000, 9999)}")
    if style == 2:
        return ("PHONE_NUMBER", f"+44 7{r.randint(100, 999)} {r.randint(100000, 999999)}")
    return ("PHONE_NUMBER", f"+1.{r.randint(201, 989)}.{r.randint(200, 999)}.{r.randint(1000, 9999)}")


def card(f, r):
    if r.random() < 0.5:
        n = f.credit_card_number(card_type="amex")
        return ("CREDIT_CARD", f"{n[:4]} {n[4:10]} {n[10:]}")  # Amex 4-6-5
    n = f.credit_card_number(card_type=r.choice(["visa16", "mastercard", "discover"]))
    return ("CREDIT_CARD", r.choice([n, "-".join(n[i:i + 4] for i in range(0, 16, 4))]))


def iban(f, r):
    v = f.iban()
    if r.random() < 0.6:
        v = " ".join(v[i:i + 4] for i in range(0, len(v), 4))
    return ("IBAN_CODE", v)


def date(f, r):
    d = f.date_time_between(start_date="-3y", end_date="+1y")
    fmt = r.choice(["%d-%b-%Y", "%Y/%m/%d", "%A, %d %B %Y", "%b %d", "%d.%m.%Y", "%m/%d/%y", "%d %b %Y"])
    v = d.strftime(fmt)
    return ("DATE_TIME", v.upper() if fmt == "%d-%b-%Y" else v)


def clock(f, r):
    return ("DATE_TIME", r.choice([f"{r.randint(1, 12)} {r.choice(['PM', 'AM', 'pm', 'am'])}",
                                   f"{r.randint(1, 12)}:{r.choice(['00', '15', '30', '45'])}{r.choice(['am', 'pm'])}",
                                   f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"]))


def place(f, r):
    return ("LOCATION", r.choice([f.city(), r.choice(TOWNS)]))


def street(f, r):
    return ("LOCATION", f.street_address().replace("\n", ", "))


def ip(f, r):
    return ("IP_ADDRESS", f.ipv4_public() if r.random() < 0.7 else f.ipv6())


def url(f, r):
    return ("URL", f.url() + r.choice(["", "account/settings?uid=" + str(r.randint(100, 9999)), f.uri_path()]))


def email(f, r):
    return ("EMAIL_ADDRESS", r.choice([f.email(), f"{f.first_name().lower()}.{f.last_name().lower()}@{f.domain_name()}"]))


def vendor_key(r):
    kind = r.randrange(8)
    return ("SECRET", [
        lambda: "AKIA" + token(r, 16, UPPER_DIGITS),
        lambda: "ghp_" + token(r, 36),
        lambda: "xoxb-" + str(r.randint(10**11, 10**12)) + "-" + token(r, 24),
        lambda: "AIza" + token(r, 35),
        lambda: "glpat-" + token(r, 20),
        lambda: "sk-" + token(r, 48),
        lambda: "sk_live_" + token(r, 24),
        lambda: "SG." + token(r, 22) + "." + token(r, 43),
    ][kind]())


def entropy_secret(r):
    return ("SECRET", r.choice([token(r, 32, HEX), token(r, 40), token(r, 24) + "==", token(r, 28, HEX + "ABCDEF")]))


def password(r):
    return ("SECRET", token(r, r.randint(9, 16), "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789!#$%&*?@"))


# ------------------------------------------------------------------ look-alikes (not PII)
def version(r):
    return (None, r.choice([f"{r.randint(0, 9)}.{r.randint(0, 40)}.{r.randint(0, 30)}", f"v{r.randint(1, 5)}.{r.randint(0, 9)}",
                            f"{r.randint(1, 4)}.{r.randint(0, 9)}.{r.randint(0, 9)}-rc{r.randint(1, 5)}"]))


def sha(r):
    return (None, token(r, r.choice([7, 12, 40, 64]), HEX))


def uid(r):
    return (None, str(uuid.UUID(int=r.getrandbits(128))))


def port(r):
    return (None, str(r.choice([22, 443, 3306, 5432, 6379, 8080, 9092, r.randint(1024, 65535)])))


def fname(r):
    return (None, r.choice(["payments/refund_worker.py", "deploy.sh", "values-prod.yaml", "src/lib/cache.rs",
                            "migrations/0042_add_index.sql", "Dockerfile", "k8s/ingress.yml", "auth.test.ts"]))


def order(r):
    return (None, r.choice([f"INV-{r.randint(10000, 99999)}", f"#{r.randint(100000, 999999)}", f"PO{r.randint(10**7, 10**8)}",
                            f"req-{token(r, 10, HEX)}"]))


# ------------------------------------------------------------------ templates by kind
def ticket_a(f, r):
    return ["[SUP-", (None, str(r.randint(1000, 9999))), "] Reporter: ", person(f, r), " <", email(f, r), ">\n",
            "Priority: P2   Component: billing   Build: ", version(r), "\n\n",
            "Customer says the export to ", fname(r), " hangs since ", date(f, r), ". They can be reached on ",
            phone(f, r), " after ", clock(f, r), ". Order ", order(r), ".\n"]


def ticket_b(f, r):
    t, last = r.choice(TITLES), f.last_name()
    return ["Incident ", order(r), " escalated by ", t, " ", ("PERSON", last), ". The clinic at ", street(f, r), ", ",
            place(f, r), " lost access at ", clock(f, r), ". Gateway ", ip(f, r), " returned 502 on port ", port(r), ".\n"]


def email_a(f, r):
    a, b = f.first_name(), f.first_name()
    return [r.choice(["Hi ", "Hello ", "Dear "]), ("PERSON", a), ",\n\n",
            "The invoice for card ", card(f, r), " bounced. Please update the IBAN to ", iban(f, r),
            " before ", date(f, r), ".\nThe portal is ", url(f, r), ".\n\n",
            r.choice(["Cheers,\n", "Best regards,\n", "Thanks,\n", "-- \n"]), ("PERSON", b), "\n"]


def email_b(f, r):
    return ["From: ", email(f, r), "\nTo: ", email(f, r), "\nDate: ", date(f, r), "\nSubject: Re: VPN access\n\n",
            "Morning ", first(f, r), " - your temporary passcode is ", password(r), ". It expires at ",
            clock(f, r), ".\n", "Sent from my phone ", phone(f, r), "\n"]


def chat_a(f, r):
    a, b = f.first_name().lower(), f.first_name().lower()
    return ["[", ("DATE_TIME", f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"), "] <", ("PERSON", a), "> deploy of ",
            version(r), " is stuck again\n[", ("DATE_TIME", f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"), "] <",
            ("PERSON", b), "> try the staging box, ssh as admin, pw ", password(r), "\n",
            "[", ("DATE_TIME", f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"), "] <", ("PERSON", a),
            "> thx, also ping @", ("PERSON", f.first_name()), " about the ", fname(r), " diff\n"]


def chat_b(f, r):
    n = f.first_name()
    return [("PERSON", n), ": can someone call me? ", phone(f, r), "\n", "ops-bot: pipeline ", sha(r), " failed on step ",
            (None, str(r.randint(2, 9))), "\n", ("PERSON", f.first_name()), ": ", ("PERSON", n),
            " the password for the grafana viewer is ", password(r), " fwiw\n"]


def clinical_a(f, r):
    return ["PROGRESS NOTE  ", date(f, r), "\nPt: ", person(f, r), "   DOB ", date(f, r), "   SSN ",
            ("US_SSN", f.unique.ssn() if "en_US" in f.locales else f"{r.randint(100, 665)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}"),
            "\nSeen by ", r.choice(TITLES), " ", ("PERSON", f.last_name()), " at ", clock(f, r),
            ". Lives with daughter in ", place(f, r), ". BP 128/82, HR 74. Dose 5 mg bid x 14 days.\n"]


def clinical_b(f, r):
    return ["Discharge summary for ", person(f, r), " (MRN ", (None, str(r.randint(10**6, 10**7))), ").\n",
            "Address on file: ", street(f, r), ".\nNext of kin ", person(f, r), ", tel ", phone(f, r),
            ". Follow-up ", date(f, r), " with ", r.choice(TITLES), " ", ("PERSON", f.last_name()), ".\n"]


def config_json(f, r):
    return ['{\n  "service": "ledger",\n  "port": ', port(r), ',\n  "image_digest": "sha256:', sha(r),
            '",\n  "stripe": {"secret_key": "', ("SECRET", "sk_live_" + token(r, 24)), '"},\n  "webhookSigningSecret": "',
            entropy_secret(r), '",\n  "owner_email": "', email(f, r), '",\n  "request_timeout_ms": 5000\n}\n']


def config_yaml(f, r):
    return ["database:\n  host: db-primary.internal\n  port: ", port(r), "\n  user: ledger_rw\n  password: ",
            password(r), "\nauth:\n  client_id: ", uid(r), "\n  client_secret: ", entropy_secret(r),
            "\nnotify:\n  oncall: ", email(f, r), "\n  slack_token: ", vendor_key(r), "\n"]


def config_env(f, r):
    return ["# .env for ", fname(r), "\nNODE_ENV=production\nPORT=", port(r), "\nSESSION_SECRET=", entropy_secret(r),
            "\nGITLAB_TOKEN=", ("SECRET", "glpat-" + token(r, 20)), "\nSENTRY_RELEASE=", version(r),
            "\nADMIN_CONTACT=", email(f, r), "\n"]


def config_ini(f, r):
    return ["[smtp]\nhost = mail.internal\nport = ", port(r), "\nusername = notifier\npasswd = ", password(r),
            "\n\n[aws]\naws_access_key_id = ", ("SECRET", "AKIA" + token(r, 16, UPPER_DIGITS)),
            "\naws_secret_access_key = ", ("SECRET", token(r, 40, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+")),
            "\nregion = eu-west-1\n"]


def log_apache(f, r):
    d = f.date_time_between(start_date="-1y")
    return [ip(f, r), ' - - [', ("DATE_TIME", d.strftime("%d/%b/%Y:%H:%M:%S") + " " + r.choice(["+0000", "-0700", "+0200"])),
            '] "GET /api/v2/orders/', (None, str(r.randint(1000, 99999))), ' HTTP/1.1" 200 ', (None, str(r.randint(100, 90000))),
            ' "', url(f, r), '" "Mozilla/5.0"\n']


def log_syslog(f, r):
    d = f.date_time_between(start_date="-1y")
    return [("DATE_TIME", f"{d:%b} {d.day:>2} {d:%H:%M:%S}"), " web-", (None, str(r.randint(1, 9))),
            " sshd[", (None, str(r.randint(1000, 65000))), "]: Accepted publickey for deploy from ", ip(f, r), " port ",
            port(r), " ssh2\n"]


def log_iso(f, r):
    d = f.date_time_between(start_date="-1y")
    return [("DATE_TIME", d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{r.randint(0, 999):03d}Z"), " WARN  [worker-",
            (None, str(r.randint(1, 16))), "] retry ", (None, str(r.randint(1, 5))), "/5 sending receipt to ", email(f, r),
            " (job ", uid(r), ")\n"]


def log_json(f, r):
    d = f.date_time_between(start_date="-1y")
    return ['{"ts": "', ("DATE_TIME", d.strftime("%Y-%m-%d %H:%M:%S")), '", "level": "info", "msg": "login ok", "user": "',
            email(f, r), '", "ip": "', ip(f, r), '", "trace_id": "', sha(r), '", "latency_ms": ',
            (None, str(r.randint(1, 900))), "}\n"]


def code_a(f, r):
    return ["import requests\n\n", "# TODO(", ("PERSON", f.first_name().lower()), "): move to vault\n",
            "API_KEY = \"", vendor_key(r), "\"\n", "BASE = \"", url(f, r), "\"\n\n",
            "def fetch(order_id: int, timeout: float = 3.5):\n",
            "    return requests.get(f\"{BASE}/orders/{order_id}\", headers={\"X-Api-Key\": API_KEY}, timeout=timeout)\n"]


def code_b(f, r):
    return ["// Author: ", person(f, r), " <", email(f, r), ">\n", "const db = connect({ host: 'localhost', port: ",
            port(r), ", password: '", password(r), "' });\n", "// see ", fname(r), " (", version(r), ")\n"]


def clean_a(f, r):
    return ["Release ", version(r), " pins ", fname(r), " to commit ", sha(r), "; the sidecar listens on ", port(r),
            " and the job ", uid(r), " finished in 42 s. Ref ", order(r), ".\n"]


def clean_b(f, r):
    return ["server:\n  listen: 0.0.0.0:", port(r), "\n  workers: 8\n  image: registry.local/ledger:", version(r),
            "\n  digest: sha256:", sha(r), "\n  timeout: 30s\ncache:\n  ttl_seconds: 3600\n"]


def clean_c(f, r):
    return ["Traceback (most recent call last):\n  File \"", fname(r), "\", line ", (None, str(r.randint(10, 900))),
            ", in handle\nKeyError: 'tenant_id'\nretry budget 3/5, request ", order(r), ", build ", version(r), "\n"]


def clean_d(f, r):
    return ["The cron job runs every 15 minutes and keeps 7 days of logs. Bump the chart to ", version(r),
            " and rerun `make test` (took 312 ms). See ", fname(r), " for the ", port(r), " mapping; UUID ", uid(r), ".\n"]


TEMPLATES = {
    "ticket": [ticket_a, ticket_b], "email": [email_a, email_b], "chat": [chat_a, chat_b],
    "clinical": [clinical_a, clinical_b], "config_json": [config_json], "config_yaml": [config_yaml],
    "config_env": [config_env], "config_ini": [config_ini], "log_apache": [log_apache], "log_syslog": [log_syslog],
    "log_iso": [log_iso], "log_json": [log_json], "code": [code_a, code_b],
}
CLEAN = [clean_a, clean_b, clean_c, clean_d]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    write_jsonl(generate(TEMPLATES, CLEAN, n=a.n, seed=a.seed, locales=LOCALES, split="holdout"), a.out)


if __name__ == "__main__":
    main()
