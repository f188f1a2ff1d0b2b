"""More DEV templates (session 3): new styles and value formats for the dev set — signature blocks, EU/UK
address layouts with postcodes, places in prose ("based in", "X-based", "near X, ST"), Slack-style handles,
nginx error logs, HTTP dates, Java properties/TOML config, connection strings in code. Still dev: tuned on.
"""

from __future__ import annotations

from dev_set import (TITLES, card, clock, date, email, first, fname, hex_secret, ip, order, password, person, phone,
                     port, sha, uid, url, vendor_key, version)
from labelled import ALNUM, token

JOBS = ["Site Reliability Engineer", "Office Manager", "Head of Data", "Account Executive", "Staff Nurse"]


def _try(f, method: str, default: str) -> str:
    try:
        return getattr(f, method)()
    except AttributeError:  # a locale without this provider
        return default


def city(f, r):
    return ("LOCATION", f.city())


def eu_address(f, r):
    """'Via Roma 12, 20121 Milano' / '12 Rue X, 75001 Paris' / 'Hauptstr. 5, 10115 Berlin' layouts, one span."""
    street, num, pc, town = f.street_name(), f.building_number(), f.postcode(), f.city()
    return ("LOCATION", r.choice([f"{street} {num}, {pc} {town}", f"{num} {street}, {pc} {town}",
                                  f"{street} {num}\n{pc} {town}"]))


def signature(f, r):
    name = f.name()
    return ["--\n", ("PERSON", name), "\n", r.choice(JOBS), "\n", eu_address(f, r), "\n", ("LOCATION", f.country()),
            "\nTel: ", phone(f, r), "\n"]


def email_c(f, r):
    return [r.choice(["Dear ", "Hello "]), r.choice(TITLES), " ", ("PERSON", f.last_name()), ",\n\nthe contract for the ",
            city(f, r), " office is attached; invoices go to ", email(f, r), ". The kickoff is on ", date(f, r), " at ",
            clock(f, r), ".\n\n", *signature(f, r)]


def ticket_c(f, r):
    return ["[", order(r), "] Reported by ", person(f, r), " (", city(f, r), "-based support). Device moved from ",
            city(f, r), " to ", city(f, r), " on ", date(f, r), "; app ", version(r), " crashes on start.\n",
            "Escalated to ", first(f, r), " who lives near ", ("LOCATION", f.city() + ", " + _try(f, "state_abbr", "NY")),
            ".\n"]


def chat_c(f, r):
    a, b = f.first_name(), f.first_name()
    handle = f.user_name()
    return [("PERSON", a), ": moving to ", city(f, r), " next month, new mobile ", phone(f, r), "\n",
            ("PERSON", b), ": congrats! cc <@U", token(r, 8, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"), "|",
            ("PERSON", handle), ">\n", ("PERSON", a), ": also the vpn pin is ", ("SECRET", str(r.randint(100000, 999999))),
            " do not share\n"]


def clinical_c(f, r):
    last = f.last_name()
    return ["Pt ", ("PERSON", f"{f.first_name()[0]}. {last}"), ", ", (None, str(r.randint(19, 94))),
            "yo, lives with daughter ", first(f, r), " in ", city(f, r), ". Referred by Dr ", ("PERSON", f.last_name()),
            " on ", date(f, r), ". BP 128/84, metformin 500 mg bid. Next review ", date(f, r), ".\n"]


def log_nginx_error(f, r):
    d = f.date_time_between(start_date="-2y")
    return [("DATE_TIME", d.strftime("%Y/%m/%d %H:%M:%S")), " [error] ", (None, f"{r.randint(100, 9999)}#0"),
            ": *", (None, str(r.randint(1, 99999))), " upstream timed out, client: ", ip(f, r), ", server: api, request: ",
            '"GET /v1/users HTTP/1.1", referrer: "', url(f, r), '"\n']


def log_http(f, r):
    d = f.date_time_between(start_date="-2y")
    return ["HTTP/1.1 302 Found\nDate: ", ("DATE_TIME", d.strftime("%a, %d %b %Y %H:%M:%S GMT")), "\nLocation: ", url(f, r),
            "\nSet-Cookie: session=", ("SECRET", token(r, 32, ALNUM)), "; HttpOnly\nX-Request-Id: ", uid(r), "\n"]


def config_props(f, r):
    return ["spring.datasource.url=jdbc:postgresql://db:", port(r), "/app\nspring.datasource.password=", password(r),
            "\nmail.smtp.user=", email(f, r), "\nstripe.api-key=", vendor_key(r), "\nserver.port=", port(r), "\n"]


def config_toml(f, r):
    return ['[owner]\nname = "', person(f, r), '"\nemail = "', email(f, r), '"\n\n[auth]\nclient_secret = "',
            hex_secret(r), '"\nrelease = "', version(r), '"\n']


def code_c(f, r):
    user, pw = f.user_name(), token(r, 14)
    return ["conn = psycopg2.connect(\"", ("SECRET", f"postgresql://{user}:{pw}@db.internal:5432/app"), "\")\n",
            "const stripe = require('stripe')('", vendor_key(r), "');\n// TODO(", ("PERSON", f.first_name().lower()),
            "): move to vault, see ", fname(r), " @ ", sha(r), "\n"]


def clean_d(f, r):
    return ["Deployed ", version(r), " to eu-west-1 at build ", order(r), "; health check on :", port(r), " ok. Artifact ",
            sha(r), ", run ", uid(r), ". Rollback plan in ", fname(r), ".\n"]


def clean_e(f, r):
    return ["[server]\nhost = \"0.0.0.0\"\nport = ", port(r), "\nworkers = 4\n[build]\nversion = \"", version(r),
            "\"\ncommit = \"", sha(r), "\"\n"]


MORE = {"email": [email_c], "ticket": [ticket_c], "chat": [chat_c], "clinical": [clinical_c],
        "log_nginx": [log_nginx_error], "log_http": [log_http], "config_props": [config_props],
        "config_toml": [config_toml], "code": [code_c]}
MORE_CLEAN = [clean_d, clean_e]
MORE_LOCALES = ["it_IT", "nl_NL", "pl_PL", "en_AU"]
