"""DEV labelled PII set: the set the recognizers are tuned on (templates, styles and value formats of its
own; bench/pii/holdout_set.py is the disjoint set that is never tuned on).

python bench/pii/dev_set.py --n 600 --seed 3 --out /tmp/pii_dev.jsonl
"""

from __future__ import annotations

import argparse
import uuid

from labelled import HEX, UPPER_DIGITS, generate, token, write_jsonl

LOCALES = ["en_US", "en_CA", "en_IE", "de_DE", "es_ES"]
TOWNS = ["Keswick", "Bisbee", "Ouray", "Frome", "Sedona", "Whitby", "Galena", "Dingle", "Giethoorn", "Colmar",
         "Hallstatt", "Rye", "Stowe", "Cobh"]
TITLES = ["Dr.", "Mr", "Ms", "Mrs.", "Miss", "Sr.", "Dr"]


def person(f, r):
    return ("PERSON", r.choice([f"{f.first_name()} {f.last_name()}", f"{f.last_name()}, {f.first_name()}"]))


def first(f, r):
    return ("PERSON", f.first_name())


def phone(f, r):
    style = r.randrange(5)
    a, b, c = r.randint(201, 989), r.randint(200, 999), r.randint(1000, 9999)
    return ("PHONE_NUMBER", [f.phone_number(), f"1{a}{b}{c}", f"({a}) {b} {c}", f"{a}.{b}.{c}",
                             f"0049 {r.randint(30, 89)} {r.randint(1000000, 9999999)}"][style])


def card(f, r):
    if r.random() < 0.5:
        n = f.credit_card_number(card_type="amex")
        return ("CREDIT_CARD", r.choice([f"{n[:4]}-{n[4:10]}-{n[10:]}", f"{n[:4]} {n[4:10]} {n[10:]}", n]))
    n = f.credit_card_number(card_type=r.choice(["visa16", "mastercard", "jcb16"]))
    return ("CREDIT_CARD", " ".join(n[i:i + 4] for i in range(0, 16, 4)))


def iban(f, r):
    v = f.iban()
    return ("IBAN_CODE", r.choice([v, " ".join(v[i:i + 4] for i in range(0, len(v), 4)), v[:4] + " " + v[4:]]))


def date(f, r):
    d = f.date_time_between(start_date="-4y", end_date="+1y")
    fmt = r.choice(["%d-%b-%Y", "%B %d", "%Y-%m-%d", "%a %d %b", "%d/%m/%Y", "%B %d, %Y", "%d %B"])
    v = d.strftime(fmt)
    return ("DATE_TIME", v.upper() if fmt == "%d-%b-%Y" and r.random() < 0.6 else v)


def clock(f, r):
    return ("DATE_TIME", r.choice([f"{r.randint(1, 12)}{r.choice(['pm', 'am', 'PM'])}", f"{r.randint(1, 12)} {r.choice(['PM', 'AM'])}",
                                   f"{r.randint(1, 12)}:{r.randint(0, 59):02d} {r.choice(['PM', 'AM'])}"]))


def place(f, r):
    return ("LOCATION", r.choice([f.city(), r.choice(TOWNS)]))


def street(f, r):
    return ("LOCATION", f.street_address().replace("\n", " "))


def ip(f, r):
    return ("IP_ADDRESS", r.choice([f.ipv4_public(), f.ipv4_public(), f.ipv6()]))


def url(f, r):
    return ("URL", r.choice([f.url(), f"https://{f.domain_name()}/u/{f.user_name()}", f"www.{f.domain_name()}/help"]))


def email(f, r):
    return ("EMAIL_ADDRESS", r.choice([f.email(), f.company_email(), f"{f.user_name()}+ops@{f.free_email_domain()}"]))


def vendor_key(r):
    return ("SECRET", r.choice([
        "AKIA" + token(r, 16, UPPER_DIGITS), "ghp_" + token(r, 36), "gho_" + token(r, 36),
        "xoxp-" + str(r.randint(10**10, 10**11)) + "-" + str(r.randint(10**10, 10**11)) + "-" + token(r, 32, HEX),
        "AIza" + token(r, 35, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"), "glpat-" + token(r, 20),
        "sk-proj-" + token(r, 40), "rk_live_" + token(r, 24), "npm_" + token(r, 36), "hf_" + token(r, 34),
    ]))


def hex_secret(r):
    return ("SECRET", r.choice([token(r, 64, HEX), token(r, 32), token(r, 44) + "=", "whsec_" + token(r, 32)]))


def password(r):
    return ("SECRET", r.choice([token(r, 12), token(r, 8) + r.choice("!$%#") + str(r.randint(10, 99)),
                                r.choice(["Summer", "Winter", "Dragon", "Monkey"]) + str(r.randint(2000, 2030)) + "!"]))


def version(r):
    return (None, r.choice([f"{r.randint(0, 9)}.{r.randint(0, 30)}.{r.randint(0, 20)}", f"v{r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}"]))


def sha(r):
    return (None, token(r, r.choice([8, 40, 64]), HEX))


def uid(r):
    return (None, str(uuid.UUID(int=r.getrandbits(128))))


def port(r):
    return (None, str(r.choice([80, 8443, 27017, 5672, r.randint(1024, 65535)])))


def fname(r):
    return (None, r.choice(["api/handlers/user.go", "settings.toml", "run_etl.py", "index.tsx", "Makefile",
                            "charts/app/values.yaml", "scripts/backup.sh"]))


def order(r):
    return (None, r.choice([f"ORD-{r.randint(10**6, 10**7)}", f"TKT-{r.randint(1000, 9999)}", f"build {r.randint(1000, 9999)}"]))


def ticket_a(f, r):
    return ["Ticket ", order(r), " opened by ", person(f, r), " (", email(f, r), ", ", phone(f, r), ")\n",
            "Summary: cannot sync since ", version(r), "; started ", date(f, r), " around ", clock(f, r), ". Screenshot: ",
            url(f, r), "\n"]


def ticket_b(f, r):
    return ["Assigned to ", r.choice(TITLES), " ", ("PERSON", f.last_name()), ". Customer site: ", street(f, r), " in ",
            place(f, r), ". Last seen from ", ip(f, r), ":", port(r), ". Ref ", order(r), ".\n"]


def email_a(f, r):
    return [r.choice(["Hey ", "Hi ", "Good morning "]), first(f, r), ",\nplease charge ", card(f, r),
            " for the renewal and send the receipt to ", email(f, r), ". Bank: ", iban(f, r), ".\n",
            r.choice(["Regards,\n", "Thanks!\n", "Kind regards,\n", "Best,\n"]), first(f, r), "\n"]


def email_b(f, r):
    return ["On ", date(f, r), ", ", person(f, r), " <", email(f, r), "> wrote:\n> the new login is admin / ", password(r),
            "\n> call me on ", phone(f, r), "\n"]


def chat_a(f, r):
    a, b = f.first_name(), f.first_name()
    return [("PERSON", a), " [", clock(f, r), "]: anyone seen ", fname(r), " fail?\n", ("PERSON", b), " [", clock(f, r),
            "]: yes, my password ", password(r), " stopped working too\n", ("PERSON", a), ": ok will ask @",
            ("PERSON", f.first_name().lower()), "\n"]


def chat_b(f, r):
    return ["@", ("PERSON", f.first_name().lower()), " the wifi passphrase is ", password(r), " and the printer is at ",
            street(f, r), "\n", "reply from ", first(f, r), ": thanks, see you ", date(f, r), "\n"]


def clinical_a(f, r):
    return ["Patient: ", person(f, r), "\nDOB: ", date(f, r), "\nSSN: ", ("US_SSN", f"{r.randint(100, 665)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}"),
            "\nHome: ", street(f, r), ", ", place(f, r), "\nPhysician: ", r.choice(TITLES), " ", ("PERSON", f.last_name()),
            "\nNotes: seen at ", clock(f, r), "; temp 38.2 C; ibuprofen 400 mg q6h.\n"]


def clinical_b(f, r):
    return ["Mrs ", ("PERSON", f.last_name()), " called on ", date(f, r), " asking about her results. Spoke to ",
            first(f, r), " at the ", place(f, r), " office; callback number ", phone(f, r), ".\n"]


def config_json(f, r):
    return ['{"db": {"host": "', ("IP_ADDRESS", f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"), '", "port": ', port(r), ', "password": "', password(r), '"},\n "apiKey": "',
            vendor_key(r), '",\n "signing_secret": "', hex_secret(r), '",\n "commit": "', sha(r), '"}\n']


def config_yaml(f, r):
    return ["smtp:\n  user: alerts\n  pass: ", password(r), "\ngithub:\n  token: ", vendor_key(r), "\nbuild:\n  sha: ",
            sha(r), "\n  version: ", version(r), "\nadmin: ", email(f, r), "\n"]


def config_env(f, r):
    return ["export DB_PASSWORD=", password(r), "\nexport JWT_SECRET=", hex_secret(r), "\nexport OPENAI_API_KEY=",
            ("SECRET", "sk-" + token(r, 48)), "\nexport APP_PORT=", port(r), "\n"]


def config_ini(f, r):
    return ["[database]\nuser = app\npassword = ", password(r), "\nport = ", port(r), "\n[api]\nsecret_key = ",
            hex_secret(r), "\nkey_id = ", uid(r), "\n"]


def log_apache(f, r):
    d = f.date_time_between(start_date="-2y")
    return [ip(f, r), ' - - [', ("DATE_TIME", d.strftime("%d/%b/%Y:%H:%M:%S +0000")), '] "POST /login HTTP/2.0" 401 ',
            (None, str(r.randint(100, 5000))), ' "', url(f, r), '"\n']


def log_syslog(f, r):
    d = f.date_time_between(start_date="-2y")
    return [("DATE_TIME", f"{d:%b} {d.day:>2} {d:%H:%M:%S}"), " host kernel: [", (None, f"{r.randint(1, 99999)}.{r.randint(0, 999999):06d}"),
            "] eth0: link up, peer ", ip(f, r), "\n"]


def log_iso(f, r):
    d = f.date_time_between(start_date="-2y")
    return [("DATE_TIME", d.strftime("%Y-%m-%d %H:%M:%S,") + f"{r.randint(0, 999):03d}"), " ERROR payment declined for ",
            email(f, r), " card ending ", (None, str(r.randint(1000, 9999))), " order ", order(r), "\n"]


def log_json(f, r):
    d = f.date_time_between(start_date="-2y")
    return ['{"@timestamp":"', ("DATE_TIME", d.strftime("%Y-%m-%dT%H:%M:%S+00:00")), '","event":"signup","email":"',
            email(f, r), '","phone":"', phone(f, r), '","request_id":"', uid(r), '"}\n']


def code_a(f, r):
    return ["# maintainer: ", person(f, r), "\n", "client = boto3.client('s3', aws_access_key_id='",
            ("SECRET", "AKIA" + token(r, 16, UPPER_DIGITS)), "', aws_secret_access_key='",
            ("SECRET", token(r, 40, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+")), "')\n",
            "bucket = 'logs-", sha(r), "'  # rotated in ", version(r), "\n"]


def code_b(f, r):
    return ["func TestLogin(t *testing.T) {\n\tuser := \"", email(f, r), "\"\n\tsecret := \"", hex_secret(r), "\"\n",
            "\t// ", fname(r), " line ", (None, str(r.randint(10, 500))), "\n}\n"]


def clean_a(f, r):
    return ["Merged PR ", order(r), ": bump ", fname(r), " from ", version(r), " to ", version(r), ", commit ", sha(r),
            ". CI took 4 min 12 s on port ", port(r), ".\n"]


def clean_b(f, r):
    return ['{"name": "worker", "replicas": 3, "port": ', port(r), ', "image": "app:', version(r), '", "checksum": "',
            sha(r), '", "run_id": "', uid(r), '"}\n']


def clean_c(f, r):
    return ["Memory rose to 2.4 GB after upgrading to ", version(r), "; p99 latency 120 ms. Heap dump in ", fname(r),
            ", trace ", uid(r), ".\n"]


TEMPLATES = {
    "ticket": [ticket_a, ticket_b], "email": [email_a, email_b], "chat": [chat_a, chat_b],
    "clinical": [clinical_a, clinical_b], "config_json": [config_json], "config_yaml": [config_yaml],
    "config_env": [config_env], "config_ini": [config_ini], "log_apache": [log_apache], "log_syslog": [log_syslog],
    "log_iso": [log_iso], "log_json": [log_json], "code": [code_a, code_b],
}
CLEAN = [clean_a, clean_b, clean_c]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from dev_more import MORE, MORE_CLEAN, MORE_LOCALES

    templates = {k: [*TEMPLATES.get(k, []), *MORE.get(k, [])] for k in sorted({*TEMPLATES, *MORE})}
    write_jsonl(generate(templates, CLEAN + MORE_CLEAN, n=a.n, seed=a.seed, locales=LOCALES + MORE_LOCALES,
                         split="dev"), a.out)


if __name__ == "__main__":
    main()
