"""Labelled PII eval set: domain templates + Faker values with known spans + labelled look-alikes (not PII).

python bench/pii/make_set.py --n 300 --seed 7 --split eval --out /tmp/pii_eval.jsonl
'dev' and 'eval' use disjoint template lists and different Faker locales for values.
"""

from __future__ import annotations

import argparse
import json
import random
import uuid

from faker import Faker

DEV = [
    "Ticket {n}: {PERSON} ({EMAIL_ADDRESS}) cannot log in after upgrading to {VER}. Call back at {PHONE_NUMBER}.",
    "Hi team,\n{PERSON} from {LOCATION} reported a crash in {FILE} on {DATE_TIME}. Client IP {IP_ADDRESS}, port {PORT}.",
    "Patient {PERSON}, SSN {US_SSN}, admitted {DATE_TIME}. Billing card {CREDIT_CARD}, IBAN {IBAN_CODE}.",
    "See {URL} for the runbook. Owner: {PERSON}. Hash {HASH} deployed on build {VER}.",
    "db_password = {PASSWORD}\naws_access_key_id = {AWS_ACCESS_KEY}\nrequest_id: {UUID}",
    "DATABASE_URL={CONNECTION_STRING}\nGITHUB_TOKEN={GITHUB_TOKEN}\nretries: {PORT}",
]
EVAL = [
    "From: {PERSON} <{EMAIL_ADDRESS}>\nSubject: outage in {LOCATION}\n\nWe saw errors from {IP_ADDRESS} starting {DATE_TIME}. Version {VER}, module {FILE}.",
    "Customer {PERSON} phoned from {PHONE_NUMBER} about order {ORDER}; refund to IBAN {IBAN_CODE}.",
    "Intake note: {PERSON} (SSN {US_SSN}) lives in {LOCATION}. Next visit {DATE_TIME}. Paid with {CREDIT_CARD}.",
    "Docs moved to {URL}. Ping {PERSON} if the job {UUID} fails again (epoch {EPOCH}).",
    "[slack]\ntoken: {SLACK_TOKEN}\n[stripe]\napi_key: {STRIPE_KEY}\n# commit {HASH}",
    "export OPENAI_API_KEY={OPENAI_KEY}\nexport JWT={JWT}\nredis_url: {CONNECTION_STRING}",
    "{PRIVATE_KEY}\n# generated for host {FILE} listening on {PORT}",
]
CLEAN = [
    "Bumped {FILE} to {VER}; listens on port {PORT}. Artifact sha {HASH}. Job {UUID} finished at epoch {EPOCH}.",
    "Order {ORDER} processed by worker-{PORT}. See utils.{FILE} and config.yaml (timeout {PORT} ms).",
    "pip install package=={VER}\nrun id {UUID}; checksum {HASH}",
]


def rand(r: random.Random, alphabet: str, n: int) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def values(fake: Faker, r: random.Random) -> dict:
    an = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return {
        "PERSON": fake.name(), "EMAIL_ADDRESS": fake.email(), "PHONE_NUMBER": fake.phone_number(),
        "LOCATION": fake.city(), "CREDIT_CARD": fake.credit_card_number(), "IBAN_CODE": fake.iban(),
        "US_SSN": fake["en_US"].ssn(), "IP_ADDRESS": fake.ipv4_public(), "URL": fake.url() + fake.uri_path(),
        "DATE_TIME": r.choice([fake.date(), fake.date(pattern="%B %d, %Y"), fake.date(pattern="%m/%d/%Y")]),
        "PASSWORD": rand(r, an + "!@%&", 14), "AWS_ACCESS_KEY": "AKIA" + rand(r, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16),
        "CONNECTION_STRING": f"postgresql://{fake.user_name()}:{rand(r, an, 12)}@db{r.randint(1, 9)}.internal:5432/app",
        "GITHUB_TOKEN": "ghp_" + rand(r, an, 36), "SLACK_TOKEN": "xoxb-" + rand(r, "0123456789", 12) + "-" + rand(r, an, 24),
        "STRIPE_KEY": "sk_live_" + rand(r, an, 24), "OPENAI_KEY": "sk-proj-" + rand(r, an, 40),
        "JWT": "eyJhbGciOiJIUzI1NiJ9.eyJ" + rand(r, an, 30) + "." + rand(r, an + "-_", 43),
        "PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----\n" + rand(r, an + "+/", 64) + "\n-----END RSA PRIVATE KEY-----",
        # look-alikes (not PII)
        "VER": f"{r.randint(0, 12)}.{r.randint(0, 30)}.{r.randint(0, 20)}", "PORT": str(r.randint(1024, 65535)),
        "HASH": rand(r, "0123456789abcdef", 40), "UUID": str(uuid.UUID(int=r.getrandbits(128))),
        "FILE": r.choice(["auth_service.py", "app.config.load_settings", "main.go", "billing-api.yaml", "README.md"]),
        "EPOCH": str(r.randint(1_500_000_000, 1_800_000_000)), "ORDER": f"ORD-{r.randint(1000000, 9999999)}",
        "n": str(r.randint(1000, 99999)),
    }


NOT_PII = {"VER", "PORT", "HASH", "UUID", "FILE", "EPOCH", "ORDER", "n"}


def render(template: str, vals: dict) -> dict:
    text, spans, pos = "", [], 0
    import re

    for m in re.finditer(r"\{(\w+)\}", template):
        text += template[pos:m.start()]
        v = vals[m.group(1)]
        if m.group(1) not in NOT_PII:
            spans.append({"start": len(text), "end": len(text) + len(v), "entity_type": m.group(1)})
        text += v
        pos = m.end()
    return {"text": text + template[pos:], "spans": spans}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--split", choices=["dev", "eval"], default="eval")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    r = random.Random(a.seed)
    fake = Faker(["en_US"] if a.split == "dev" else ["en_US", "en_GB"])
    fake.seed_instance(a.seed)
    templates = DEV if a.split == "dev" else EVAL
    with open(a.out, "w") as f:
        for i in range(a.n):
            clean = i % 5 == 4
            row = render(r.choice(CLEAN if clean else templates), values(fake, r))
            row.update(id=f"{a.split}-{i}", clean=clean)
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
