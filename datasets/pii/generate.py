#!/usr/bin/env python3
"""Generate the synthetic PII/secret detection corpus `datasets/pii/v1/`.

Standard library only, deterministic: `python3 datasets/pii/generate.py` rewrites
`v1/items.jsonl` and `v1/manifest.toml` byte-identically (fixed SEED, no set or
hash ordering, no clock).  Every value is synthetic: card numbers are random
Luhn-valid numbers, IBANs random with correct check digits, phone numbers come
from ranges reserved for fiction where the country has one, emails use
example.com/.org/.net, keys and tokens are random strings in the providers'
formats.  Nothing here is a real person, account or credential.

Item schema (one JSON object per line, see datasets/README.md):
  id, split (dev|test), kind (positive|negative), text,
  spans [{detector, start, end, value}] with UTF-8 *byte* offsets, note.

The self-check at the end re-validates every planted value, runs strict reference
detectors over every text (positives must have no unannotated finding, negatives
no finding at all), checks the count minimums and prints a summary table.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import random
import re
import string
import sys
import zlib
from pathlib import Path

SEED = 20240315
VERSION = 1
HERE = Path(__file__).resolve().parent
OUT = HERE / f"v{VERSION}"

DETECTORS = [
    "email", "phone", "card", "iban", "ssn", "nino", "dni", "ipv4", "ipv6",
    "private_key", "jwt", "aws_key", "gcp_key", "github_token", "gitlab_token",
    "slack_token", "openai_key", "anthropic_key", "stripe_key", "high_entropy",
]
SPLITS = ["dev", "test"]
PLANTED_PER_SPLIT = 12          # planted values per detector per split (min required: 10)
NEG_PER_KIND = 8                # negative items per trap kind (4 dev + 4 test)
MIN_PLANTED_TOTAL = 20
MIN_PLANTED_SPLIT = 10

DIGITS = string.digits
UPPER = string.ascii_uppercase
LOWER = string.ascii_lowercase
ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"
HEX = "0123456789abcdef"
DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------------------
# validation rules (shared by generators and the self-check)
# ---------------------------------------------------------------------------

def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_check_digit(body: str) -> str:
    for d in DIGITS:
        if luhn_ok(body + d):
            return d
    raise AssertionError("unreachable")


def card_brand(digits: str) -> str | None:
    n = len(digits)
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if n == 16 and (51 <= int(digits[:2]) <= 55 or 2221 <= int(digits[:4]) <= 2720):
        return "mastercard"
    if n == 15 and digits[:2] in ("34", "37"):
        return "amex"
    if n == 16 and (digits[:4] == "6011" or digits[:2] == "65"):
        return "discover"
    return None


IBAN_LENGTHS = {
    "DE": 22, "GB": 22, "FR": 27, "ES": 24, "NL": 18, "IT": 27,
    "BE": 16, "CH": 21, "AT": 20, "IE": 22, "PL": 28, "PT": 25,
}


def iban_numeric(s: str) -> int:
    return int("".join(str(int(c, 36)) for c in s))


def iban_ok(compact: str) -> bool:
    cc = compact[:2]
    if IBAN_LENGTHS.get(cc) != len(compact):
        return False
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]+", compact):
        return False
    return iban_numeric(compact[4:] + compact[:4]) % 97 == 1


def ssn_ok(value: str) -> bool:
    m = re.fullmatch(r"(\d{3})-(\d{2})-(\d{4})", value)
    if not m:
        return False
    area, group, serial = m.groups()
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"        # not D F I Q U V
NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"        # not D F I Q U V, not O
NINO_BAD_PREFIXES = ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ")


def nino_ok(value: str) -> bool:
    m = re.fullmatch(r"([A-Z])([A-Z]) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])", value)
    if not m:
        return False
    a, b = m.group(1), m.group(2)
    return a in NINO_FIRST and b in NINO_SECOND and a + b not in NINO_BAD_PREFIXES


def dni_ok(value: str) -> bool:
    m = re.fullmatch(r"(\d{8})-?([A-Z])", value)
    return bool(m) and DNI_LETTERS[int(m.group(1)) % 23] == m.group(2)


def ipv4_ok(value: str) -> bool:
    parts = value.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p.isdigit() or len(p) > 3 or (len(p) > 1 and p[0] == "0") or int(p) > 255:
            return False
    return True


def ipv6_ok(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return value.count(":") >= 2


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def jwt_ok(value: str) -> bool:
    parts = value.split(".")
    if len(parts) != 3 or not all(re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in parts):
        return False
    try:
        header = json.loads(b64url_decode(parts[0]))
    except ValueError:
        return False
    return isinstance(header, dict) and "alg" in header and "typ" in header


def mixed_alnum_ok(s: str, min_digits: int = 2) -> bool:
    return (any(c in UPPER for c in s) and any(c in LOWER for c in s)
            and sum(c in DIGITS for c in s) >= min_digits)


PROVIDER_PREFIXES = ("AKIA", "ASIA", "AIza", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
                     "github_pat_", "glpat-", "xoxb-", "xoxp-", "xoxa-", "sk-", "sk_", "rk_")

EMAIL_RE = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
PHONE_RE = (r"\+[1-9]\d{7,14}"
            r"|\+[1-9]\d{0,2}(?:[ .-]\d{1,8}){2,5}"
            r"|\(\d{3}\) ?\d{3}-\d{4}|\d{3}-\d{3}-\d{4}|\d{3}\.\d{3}\.\d{4}"
            r"|0\d{2} \d{4} \d{4}|0\d{4} \d{6}|0\d{3} \d{3} \d{4}"
            r"|0[1-9](?: \d{2}){4}")

VALUE_RULES = {
    "email": lambda v: re.fullmatch(EMAIL_RE, v) is not None,
    "phone": lambda v: re.fullmatch(PHONE_RE, v) is not None,
    "ipv4": ipv4_ok,
    "ipv6": ipv6_ok,
    "ssn": ssn_ok,
    "nino": nino_ok,
    "dni": dni_ok,
    "jwt": jwt_ok,
    "aws_key": lambda v: re.fullmatch(r"(?:AKIA|ASIA)[A-Z0-9]{16}", v) is not None,
    "gcp_key": lambda v: re.fullmatch(r"AIza[0-9A-Za-z_-]{35}", v) is not None,
    "github_token": lambda v: re.fullmatch(
        r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82}", v) is not None,
    "gitlab_token": lambda v: re.fullmatch(r"glpat-[A-Za-z0-9_-]{20}", v) is not None,
    "slack_token": lambda v: re.fullmatch(r"xox[bpa]-\d+(?:-\d+)+-[A-Za-z0-9]{20,40}", v) is not None,
    "openai_key": lambda v: (re.fullmatch(r"sk-(?:proj-)?[A-Za-z0-9]{40,64}", v) is not None
                             and mixed_alnum_ok(v.split("-")[-1])),
    "anthropic_key": lambda v: re.fullmatch(r"sk-ant-api03-[A-Za-z0-9_-]{86,98}AA", v) is not None,
    "stripe_key": lambda v: (re.fullmatch(r"(?:sk_live|sk_test|rk_live)_[A-Za-z0-9]{24,32}", v) is not None
                             and mixed_alnum_ok(v.split("_")[-1])),
    "high_entropy": lambda v: (re.fullmatch(r"[A-Za-z0-9]{24,48}", v) is not None
                               and mixed_alnum_ok(v) and not v.startswith(PROVIDER_PREFIXES)),
}


def card_value_ok(v: str) -> bool:
    if not re.fullmatch(r"\d+|\d{4}(?: \d{4}){3}|\d{4}(?:-\d{4}){3}|\d{4} \d{6} \d{5}|\d{4}-\d{6}-\d{5}", v):
        return False
    digits = re.sub(r"[ -]", "", v)
    return luhn_ok(digits) and card_brand(digits) is not None


def iban_value_ok(v: str) -> bool:
    if " " in v and not re.fullmatch(r"[A-Z0-9]{4}(?: [A-Z0-9]{4})*(?: [A-Z0-9]{1,3})?", v):
        return False
    return iban_ok(v.replace(" ", ""))


def private_key_ok(v: str) -> bool:
    lines = v.split("\n")
    m = re.fullmatch(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----", lines[0])
    if not m or lines[-1] != f"-----END {m.group(1)}-----":
        return False
    body = [ln for ln in lines[1:-1] if ln and ":" not in ln and not ln.startswith("=")]
    return len(body) >= 1 and all(re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", ln) for ln in body)


VALUE_RULES["card"] = card_value_ok
VALUE_RULES["iban"] = iban_value_ok
VALUE_RULES["private_key"] = private_key_ok


# ---------------------------------------------------------------------------
# value generators
# ---------------------------------------------------------------------------

CYCLES: dict[str, list] = {}


def pick(rng: random.Random, key: str, options):
    """Like rng.choice, but cycles through a shuffled copy of `options` so that every
    variant (card brand, key type, phone style, ...) is used about equally often."""
    queue = CYCLES.get(key)
    if not queue:
        queue = list(options)
        rng.shuffle(queue)
        CYCLES[key] = queue
    return queue.pop()


def rs(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def mixed(rng: random.Random, alphabet: str, n: int, min_digits: int = 2) -> str:
    while True:
        s = rs(rng, alphabet, n)
        if mixed_alnum_ok(s, min_digits):
            return s


def group(s: str, sizes: list[int], sep: str) -> str:
    out, i = [], 0
    for n in sizes:
        out.append(s[i:i + n])
        i += n
    return sep.join(out)


EMAIL_FIRST = ["jose", "amelie", "jurgen", "zoe", "lukasz", "ana", "priya", "lan", "oguz", "siobhan",
               "mariana", "kenji", "hana", "minjun", "bjorn", "chloe", "dmitri", "fatima", "tomas",
               "sarah", "liam", "grace", "hannah", "mateo", "noor", "ines"]
EMAIL_LAST = ["alvarez", "durand", "hoffmann", "whitfield", "wisniewski", "ruiz", "raghunathan",
              "nguyen", "yilmaz", "conceicao", "tanaka", "kim", "lindqvist", "martin", "volkov",
              "benali", "reyes", "okafor", "mwangi", "schmidt", "garcia", "haddad", "moreau"]
EMAIL_DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com", "eu.example.org",
                 "billing.example.net", "corp.example.com", "students.example.org", "dev.eu.example.net"]


def gen_email(rng):
    f, l, d = rng.choice(EMAIL_FIRST), rng.choice(EMAIL_LAST), rng.choice(EMAIL_DOMAINS)
    shape = pick(rng, "email", range(8))
    if shape == 0:
        local = f"{f}.{l}"
    elif shape == 1:
        local = f"{f}+{rng.choice(['billing', 'newsletter', 'github', 'work', 'shop', 'travel2024'])}"
    elif shape == 2:
        local = f"{f[0]}.{l}"
    elif shape == 3:
        local = f"{f}_{l}{rng.randint(10, 99)}"
    elif shape == 4:
        local = f"{f}.{rng.choice(LOWER)}.{l}"
    elif shape == 5:
        local = f"{f}-{l}"
    elif shape == 6:
        local = rng.choice(["billing", "it-support", "hr.team", "no-reply", "accounts.payable", "office"])
    else:
        local = f"{l}.{f}+{rng.choice(['alerts', 'tickets', 'cal'])}"
    return f"{local}@{d}"


def gen_phone(rng):
    style = pick(rng, "phone", range(15))
    us_area = rng.choice(["415", "212", "312", "617", "206", "512", "303", "646"])
    us_line = f"01{rng.randint(0, 99):02d}"
    uk_ldn = f"{rng.randint(0, 999):03d}"
    uk_mob = f"{rng.randint(0, 999):03d}"
    fr_block = rng.choice([("1", "99 00"), ("2", "61 91"), ("3", "53 01"), ("4", "65 71"), ("5", "36 49"), ("6", "39 98")])
    fr_tail = f"{rng.randint(0, 99):02d} {rng.randint(0, 99):02d}"
    de_tail = f"{rng.randint(0, 999):03d}"
    if style == 0:
        return f"+1{us_area}555{us_line}"
    if style == 1:
        return f"+447700900{uk_mob}"
    if style == 2:
        return f"+33{fr_block[0]}{fr_block[1].replace(' ', '')}{fr_tail.replace(' ', '')}"
    if style == 3:
        return f"+493023125{de_tail}"
    if style == 4:
        return f"+44 20 7946 0{uk_ldn}"
    if style == 5:
        return f"+49 30 23125{de_tail}"
    if style == 6:
        return f"+33 {fr_block[0]} {fr_block[1]} {fr_tail}"
    if style == 7:
        return rng.choice([f"+1 {us_area} 555 {us_line}", f"+1-{us_area}-555-{us_line}"])
    if style == 8:
        return f"({us_area}) 555-{us_line}"
    if style == 9:
        return f"{us_area}-555-{us_line}"
    if style == 10:
        return f"{us_area}.555.{us_line}"
    if style == 11:
        return f"020 7946 0{uk_ldn}"
    if style == 12:
        return f"07700 900{uk_mob}"
    if style == 13:
        return f"{rng.choice(['0113', '0161', '0121', '0117'])} 496 0{uk_ldn}"
    return f"0{fr_block[0]} {fr_block[1]} {fr_tail}"


def gen_card(rng):
    brand = pick(rng, "card", ["visa", "visa", "mc", "mc2", "amex", "disc", "disc65"])
    prefix, n = {
        "visa": ("4", 16),
        "mc": (str(rng.randint(51, 55)), 16),
        "mc2": (str(rng.randint(2221, 2720)), 16),
        "amex": (rng.choice(["34", "37"]), 15),
        "disc": ("6011", 16),
        "disc65": ("65", 16),
    }[brand]
    body = prefix + rs(rng, DIGITS, n - 1 - len(prefix))
    digits = body + luhn_check_digit(body)
    fmt = pick(rng, "card_fmt", ["plain", "space", "dash"])
    if fmt == "plain":
        return digits
    sizes = [4, 6, 5] if n == 15 else [4, 4, 4, 4]
    return group(digits, sizes, " " if fmt == "space" else "-")


def es_check(d10: str) -> str:
    w = [1, 2, 4, 8, 5, 10, 9, 7, 3, 6]
    r = 11 - sum(int(c) * k for c, k in zip(d10, w)) % 11
    return "0" if r == 11 else "1" if r == 10 else str(r)


def gen_bban(rng, cc):
    D = lambda n: rs(rng, DIGITS, n)  # noqa: E731
    L = lambda n: rs(rng, UPPER, n)  # noqa: E731
    if cc == "DE":
        return D(18)
    if cc in ("GB", "IE"):
        return L(4) + D(14)
    if cc == "FR":
        bank, branch, acct = D(5), D(5), D(11)
        key = 97 - (89 * int(bank) + 15 * int(branch) + 3 * int(acct)) % 97
        return f"{bank}{branch}{acct}{key:02d}"
    if cc == "ES":
        bank, branch, acct = D(4), D(4), D(10)
        return bank + branch + es_check("00" + bank + branch) + es_check(acct) + acct
    if cc == "NL":
        return L(4) + D(10)
    if cc == "IT":
        return L(1) + D(22)
    if cc == "BE":
        first = D(10)
        chk = int(first) % 97 or 97
        return f"{first}{chk:02d}"
    if cc == "CH":
        return D(17)
    if cc == "AT":
        return D(16)
    if cc == "PL":
        return D(24)
    if cc == "PT":
        return D(21)
    raise KeyError(cc)


def make_iban(cc, bban):
    chk = 98 - iban_numeric(bban + cc + "00") % 97
    return f"{cc}{chk:02d}{bban}"


def gen_iban(rng):
    cc = pick(rng, "iban", list(IBAN_LENGTHS))
    compact = make_iban(cc, gen_bban(rng, cc))
    if pick(rng, "iban_fmt", [True, False]):
        return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    return compact


def gen_ssn(rng):
    while True:
        area = rng.randint(1, 899)
        if area != 666:
            break
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def gen_nino(rng):
    while True:
        p = rng.choice(NINO_FIRST) + rng.choice(NINO_SECOND)
        if p not in NINO_BAD_PREFIXES:
            break
    d = rs(rng, DIGITS, 6)
    s = rng.choice("ABCD")
    if pick(rng, "nino_fmt", [True, False]):
        return f"{p} {d[:2]} {d[2:4]} {d[4:]} {s}"
    return f"{p}{d}{s}"


def gen_dni(rng):
    n = rng.randint(1000000, 99999999)
    return f"{n:08d}{pick(rng, 'dni_fmt', ['-', '', ''])}{DNI_LETTERS[n % 23]}"


def gen_ipv4(rng):
    k = pick(rng, "ipv4", range(7))
    o = lambda: rng.randint(1, 254)  # noqa: E731
    if k == 0:
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{o()}"
    if k == 1:
        return f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{o()}"
    if k == 2:
        return f"192.168.{rng.randint(0, 255)}.{o()}"
    if k == 3:
        return f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{o()}"
    while True:
        first = rng.randint(11, 223)
        if first not in (100, 127, 169, 172, 192, 198, 203):
            return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{o()}"


def gen_ipv6(rng):
    k = pick(rng, "ipv6", range(4))
    g = lambda: rng.randint(0, 0xFFFF)  # noqa: E731
    if k == 0:     # documentation prefix, compressed
        groups = [0x2001, 0xDB8, g(), 0, 0, g(), g(), g()]
        if rng.random() < 0.5:
            groups[2] = 0
    elif k == 1:   # link-local
        groups = [0xFE80, 0, 0, 0, g(), g(), g(), g()]
    elif k == 2:   # unique local
        groups = [0xFD00 | rng.randint(0, 0xFF), g(), g(), rng.randint(1, 0xFF), 0, 0, 0, rng.randint(1, 0xFFF)]
    else:          # full, uncompressed
        groups = [0x2001, 0xDB8, g(), g(), 0, 0, g(), g()]
    addr = ipaddress.IPv6Address(":".join(f"{x:x}" for x in groups))
    if k == 3:
        return addr.exploded
    return str(addr)


def wrap(s: str, width: int) -> list[str]:
    return [s[i:i + width] for i in range(0, len(s), width)]


def crc24(data: bytes) -> int:
    crc = 0xB704CE
    for b in data:
        crc ^= b << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def rbytes(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n))


def gen_private_key(rng):
    kind = pick(rng, "private_key", ["RSA", "EC", "OPENSSH", "PKCS8", "PKCS8_ED25519", "PGP"])
    if kind == "RSA":
        der = bytes.fromhex("308204a40201000282010100") + rbytes(rng, rng.randint(360, 560))
        return "\n".join(["-----BEGIN RSA PRIVATE KEY-----", *wrap(base64.b64encode(der).decode(), 64),
                          "-----END RSA PRIVATE KEY-----"])
    if kind == "EC":
        der = (bytes.fromhex("307702010104 20".replace(" ", "")) + rbytes(rng, 32)
               + bytes.fromhex("a00a06082a8648ce3d030107a144034200 04".replace(" ", "")) + rbytes(rng, 64))
        return "\n".join(["-----BEGIN EC PRIVATE KEY-----", *wrap(base64.b64encode(der).decode(), 64),
                          "-----END EC PRIVATE KEY-----"])
    if kind == "OPENSSH":
        blob = (b"openssh-key-v1\x00\x00\x00\x00\x04none\x00\x00\x00\x04none\x00\x00\x00\x00\x00\x00\x00\x01"
                b"\x00\x00\x003\x00\x00\x00\x0bssh-ed25519\x00\x00\x00 " + rbytes(rng, 32)
                + b"\x00\x00\x00\x88" + rbytes(rng, rng.randint(120, 150)))
        return "\n".join(["-----BEGIN OPENSSH PRIVATE KEY-----", *wrap(base64.b64encode(blob).decode(), 70),
                          "-----END OPENSSH PRIVATE KEY-----"])
    if kind == "PKCS8":
        der = bytes.fromhex("308204be020100300d06092a864886f70d0101010500048204a8") + rbytes(rng, rng.randint(300, 500))
        return "\n".join(["-----BEGIN PRIVATE KEY-----", *wrap(base64.b64encode(der).decode(), 64),
                          "-----END PRIVATE KEY-----"])
    if kind == "PKCS8_ED25519":
        der = bytes.fromhex("302e020100300506032b657004220420") + rbytes(rng, 32)
        return "\n".join(["-----BEGIN PRIVATE KEY-----", base64.b64encode(der).decode(), "-----END PRIVATE KEY-----"])
    data = b"\x95\x03\xc6\x04" + rbytes(rng, 4) + b"\x01\x0c\x00" + rbytes(rng, rng.randint(260, 420))
    lines = ["-----BEGIN PGP PRIVATE KEY BLOCK-----"]
    if rng.random() < 0.5:
        lines.append("Comment: exported for backup")
    lines.append("")
    lines += wrap(base64.b64encode(data).decode(), 64)
    lines.append("=" + base64.b64encode(crc24(data).to_bytes(3, "big")).decode())
    lines.append("-----END PGP PRIVATE KEY BLOCK-----")
    return "\n".join(lines)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


JWT_NAMES = ["Zoë Whitfield", "José Álvarez", "Priya Raghunathan", "Björn Lindqvist", "Grace Mwangi", "田中 花子"]


def gen_jwt(rng):
    alg = pick(rng, "jwt", ["HS256", "HS256", "RS256", "ES256", "HS512"])
    header = {"alg": alg, "typ": "JWT"}
    if alg in ("RS256", "ES256") and rng.random() < 0.6:
        header["kid"] = rs(rng, HEX, 16)
    if rng.random() < 0.3:
        header = {"typ": "JWT", **header}
    iat = rng.randint(1_700_000_000, 1_730_000_000)
    payload = {"sub": f"user_{rng.randint(1000, 99999)}", "iat": iat, "exp": iat + rng.choice([900, 3600, 86400])}
    if rng.random() < 0.5:
        payload["name"] = rng.choice(JWT_NAMES)
    if rng.random() < 0.4:
        payload["scope"] = rng.choice(["read:orders", "admin", "chat:write files:read"])
    sig_len = {"HS256": 32, "HS512": 64, "RS256": 256, "ES256": 64}[alg]
    enc = lambda o: b64url(json.dumps(o, separators=(",", ":"), ensure_ascii=False).encode())  # noqa: E731
    return f"{enc(header)}.{enc(payload)}.{b64url(rbytes(rng, sig_len))}"


def gen_aws_key(rng):
    return pick(rng, "aws", ["AKIA", "AKIA", "ASIA"]) + rs(rng, UPPER + "234567", 16)


def gen_gcp_key(rng):
    return "AIzaSy" + mixed(rng, URLSAFE, 33)


def b62(n: int, width: int) -> str:
    s = ""
    while n:
        n, r = divmod(n, 62)
        s = B62[r] + s
    return s.rjust(width, "0")


def gen_github_token(rng):
    prefix = pick(rng, "github", ["github_pat_", "ghp_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"])
    if prefix == "github_pat_":
        return "github_pat_" + mixed(rng, ALNUM, 22) + "_" + mixed(rng, ALNUM, 59)
    body = mixed(rng, ALNUM, 30)
    return prefix + body + b62(zlib.crc32(body.encode()), 6)


def gen_gitlab_token(rng):
    return "glpat-" + mixed(rng, URLSAFE, 20)


def gen_slack_token(rng):
    kind = pick(rng, "slack", ["xoxb", "xoxb", "xoxp", "xoxa"])
    if kind == "xoxb":
        return f"xoxb-{rs(rng, DIGITS, rng.choice([11, 12]))}-{rs(rng, DIGITS, 13)}-{mixed(rng, ALNUM, 24)}"
    if kind == "xoxp":
        return (f"xoxp-{rs(rng, DIGITS, 12)}-{rs(rng, DIGITS, 12)}-{rs(rng, DIGITS, 13)}-"
                f"{rs(rng, HEX, 32)}")
    return f"xoxa-2-{rs(rng, DIGITS, 12)}-{rs(rng, DIGITS, 13)}-{mixed(rng, ALNUM, 32)}"


def gen_openai_key(rng):
    k = pick(rng, "openai", range(3))
    if k == 0:
        return "sk-" + mixed(rng, ALNUM, 20) + "T3BlbkFJ" + mixed(rng, ALNUM, 20)
    if k == 1:
        return "sk-proj-" + mixed(rng, ALNUM, rng.randint(40, 64))
    return "sk-" + mixed(rng, ALNUM, rng.randint(40, 56))


def gen_anthropic_key(rng):
    return "sk-ant-api03-" + mixed(rng, URLSAFE, 93) + "AA"


def gen_stripe_key(rng):
    return pick(rng, "stripe", ["sk_live_", "sk_test_", "sk_live_", "rk_live_"]) + mixed(rng, ALNUM, rng.randint(24, 32))


def gen_high_entropy(rng):
    while True:
        s = mixed(rng, ALNUM, rng.randint(24, 48))
        if not s.startswith(PROVIDER_PREFIXES):
            return s


GEN = {
    "email": gen_email, "phone": gen_phone, "card": gen_card, "iban": gen_iban, "ssn": gen_ssn,
    "nino": gen_nino, "dni": gen_dni, "ipv4": gen_ipv4, "ipv6": gen_ipv6, "private_key": gen_private_key,
    "jwt": gen_jwt, "aws_key": gen_aws_key, "gcp_key": gen_gcp_key, "github_token": gen_github_token,
    "gitlab_token": gen_gitlab_token, "slack_token": gen_slack_token, "openai_key": gen_openai_key,
    "anthropic_key": gen_anthropic_key, "stripe_key": gen_stripe_key, "high_entropy": gen_high_entropy,
}


# ---------------------------------------------------------------------------
# reference scanner: strict detectors used to prove there are no unannotated
# items in positives and no items at all in negatives
# ---------------------------------------------------------------------------

SIMPLE_PATTERNS = [
    ("email", re.compile(r"(?<![A-Za-z0-9._%+-])" + EMAIL_RE + r"(?![A-Za-z0-9-])")),
    ("phone", re.compile(r"(?<![\w+.-])(?:" + PHONE_RE + r")(?![\w]|[.-]\d)")),
    ("private_key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
    ("jwt", re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")),
    ("aws_key", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("gcp_key", re.compile(r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])")),
    ("github_token", re.compile(r"(?:gh[pousr]_[A-Za-z0-9]{36}(?![A-Za-z0-9])|github_pat_[A-Za-z0-9_]{82}(?![A-Za-z0-9_]))")),
    ("gitlab_token", re.compile(r"glpat-[A-Za-z0-9_-]{20}(?![A-Za-z0-9_-])")),
    ("slack_token", re.compile(r"xox[abpr]-\d+-[A-Za-z0-9-]+")),
    ("openai_key", re.compile(r"(?<![\w-])sk-(?:proj-)?[A-Za-z0-9]{32,}(?![\w-])")),
    ("anthropic_key", re.compile(r"sk-ant-(?:api|admin)\d\d-[A-Za-z0-9_-]{40,}")),
    ("stripe_key", re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}")),
]
IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
SSN_RE = re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])")
NINO_RE = re.compile(r"(?<!\w)[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D](?!\w)")
DNI_RE = re.compile(r"(?<!\w)\d{8}-?[A-Z](?!\w)")
IBAN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){10,30}")
DIGIT_RUN_RE = re.compile(r"\d+(?:[ -]\d+)*")
ALNUM_RUN_RE = re.compile(r"[A-Za-z0-9]+")


def scan(text: str) -> list[tuple[str, int, int]]:
    """Findings as (detector, char_start, char_end)."""
    found = []
    for det, rx in SIMPLE_PATTERNS:
        found += [(det, m.start(), m.end()) for m in rx.finditer(text)]
    found += [("ipv4", m.start(), m.end()) for m in IPV4_RE.finditer(text) if ipv4_ok(m.group())]
    found += [("ipv6", m.start(), m.end()) for m in IPV6_RE.finditer(text) if ipv6_ok(m.group())]
    found += [("ssn", m.start(), m.end()) for m in SSN_RE.finditer(text) if ssn_ok(m.group())]
    found += [("nino", m.start(), m.end()) for m in NINO_RE.finditer(text) if nino_ok(m.group())]
    found += [("dni", m.start(), m.end()) for m in DNI_RE.finditer(text) if dni_ok(m.group())]
    for m in IBAN_RE.finditer(text):
        n = IBAN_LENGTHS.get(m.group()[:2])
        if not n:
            continue
        compact, end = "", m.start()
        for i, ch in enumerate(m.group()):
            if ch != " ":
                compact += ch
            if len(compact) == n:
                end = m.start() + i + 1
                break
        if len(compact) == n and iban_ok(compact):
            found.append(("iban", m.start(), end))
    # card-like digit runs: every whole-group window of 13..19 digits that passes Luhn
    for m in DIGIT_RUN_RE.finditer(text):
        groups = [(g.start() + m.start(), g.end() + m.start()) for g in re.finditer(r"\d+", m.group())]
        for i in range(len(groups)):
            for j in range(i, len(groups)):
                digits = "".join(text[a:b] for a, b in groups[i:j + 1])
                if 13 <= len(digits) <= 19 and luhn_ok(digits):
                    found.append(("card", groups[i][0], groups[j][1]))
    # generic high-entropy tokens
    for m in ALNUM_RUN_RE.finditer(text):
        if 24 <= len(m.group()) <= 48 and mixed_alnum_ok(m.group()):
            found.append(("high_entropy", m.start(), m.end()))
    return found


# ---------------------------------------------------------------------------
# text builder with byte offsets
# ---------------------------------------------------------------------------

class Builder:
    def __init__(self):
        self.parts: list[str] = []
        self.chars = 0
        self.bytes = 0
        self.spans: list[dict] = []

    def t(self, s: str):
        self.parts.append(s)
        self.chars += len(s)
        self.bytes += len(s.encode("utf-8"))

    def v(self, det: str, value: str):
        cs, bs = self.chars, self.bytes
        self.t(value)
        self.spans.append({"detector": det, "start": bs, "end": self.bytes, "value": value,
                           "_cs": cs, "_ce": self.chars})

    def tpl(self, template: str, det: str, value: str):
        before, after = template.split("{v}")
        self.t(before)
        self.v(det, value)
        self.t(after)

    def text(self) -> str:
        return "".join(self.parts)


# ---------------------------------------------------------------------------
# positive contexts
# ---------------------------------------------------------------------------

NAMES = ["José Álvarez", "Amélie Durand", "Jürgen Hoffmann", "Zoë Whitfield", "Łukasz Wiśniewski",
         "Ana Sofía Ruiz", "Priya Raghunathan", "Nguyễn Thị Lan", "Oğuz Yılmaz", "Siobhán Kearney",
         "Mariana Conceição", "Kenji Tanaka", "Björn Lindqvist", "Chloé Martin", "Dmitri Volkov",
         "Fatima Zahra Benali", "Tomás Reyes", "Sarah Okafor", "Liam Gallagher-Price", "Grace Mwangi",
         "Hannah Schmidt", "Mateo García", "Noor Haddad", "Inès Moreau"]
JA_NAMES = ["田中 花子", "佐藤 健", "鈴木 美咲", "高橋 翔"]

PROSE = {
    "email": ["You can reach me at {v} if you need anything else.",
              "Please send the invoice to {v} instead of my old address.",
              "My login email is {v} but the reset link never arrives.",
              "Please CC my colleague on this: {v}.",
              "The booking confirmation went to {v}, which I no longer check."],
    "phone": ["Call me back on {v}, I'm free after three.",
              "My mobile number changed to {v}.",
              "The courier tried to reach me at {v} but I missed it.",
              "Best number for the technician: {v}.",
              "You can also text me on {v}."],
    "card": ["I was charged twice on my card {v} for the same order.",
             "The payment with card {v} keeps getting declined.",
             "Please update the card on file to {v}, expiry 09/27.",
             "Please refund it to the card {v}, not to PayPal.",
             "Can you remove the saved card {v} from my account?"],
    "iban": ["Please wire the refund to IBAN {v}.",
             "Our new bank details are IBAN {v}, BIC to follow.",
             "The direct debit from {v} failed last month.",
             "Salary should be paid into {v} from next month."],
    "ssn": ["For the background check, my SSN is {v}.",
            "The W-2 shows SSN {v}, which is correct.",
            "The form asks for the employee SSN ({v}) on page two.",
            "My social security number is {v} in case you need to verify me."],
    "nino": ["My National Insurance number is {v}.",
             "Payroll has my NI number as {v}, please check it.",
             "NI no. {v} (this is for the P45 question).",
             "HMRC says the National Insurance number {v} isn't linked to my account."],
    "dni": ["My Spanish ID (DNI) is {v}.",
            "The hotel asked for the DNI {v} at check-in.",
            "Tenant DNI: {v}.",
            "The notary wrote my DNI as {v} on the contract."],
    "ipv4": ["The server at {v} stopped responding after the update.",
             "Our office egress IP is {v}, please allowlist it.",
             "I can ping {v} but SSH times out.",
             "The printer got the address {v} from DHCP."],
    "ipv6": ["The host only has the IPv6 address {v}.",
             "Traffic from {v} is being rate limited.",
             "My router shows {v} as the interface address.",
             "Can you explain why {v} is not reachable from outside?"],
    "private_key": ["Here's the key file it's complaining about:\n\n{v}\n",
                    "I pasted the deploy key below, is the format wrong?\n{v}\n",
                    "This is the key the contractor sent us:\n\n{v}\n\n"],
    "jwt": ["The API returns 401 with this token: {v}",
            "Can you decode this JWT for me? {v}",
            "The Authorization header is Bearer {v}",
            "This token expires too early: {v}"],
    "aws_key": ["I think I leaked my access key {v} in a public repo, what do I do?",
                "Is {v} an IAM user key or a temporary one?",
                "The CLI says the access key {v} is invalid.",
                "Rotate the key {v} please, the intern had it on a sticky note."],
    "gcp_key": ["Maps stopped loading, our API key is {v}.",
                "Is it safe to ship the key {v} in the Android app?",
                "Firebase rejects the web key {v} since yesterday."],
    "github_token": ["My token {v} gets 403 when pushing.",
                     "I committed {v} by accident, how do I revoke it?",
                     "The action uses the token {v} and cannot read the private repo."],
    "gitlab_token": ["CI fails to clone with the personal access token {v}.",
                     "Here's the token I used: {v}",
                     "The runner was registered with {v}, is that the right kind of token?"],
    "slack_token": ["Our bot token {v} returns invalid_auth.",
                    "The webhook works but {v} can't post to the alerts channel.",
                    "Which scopes does {v} need to read channel history?"],
    "openai_key": ["My key {v} says quota exceeded, but I have credit.",
                   "Why does {v} give 401 from the API?",
                   "I set OPENAI_API_KEY to {v} and it still asks for a key."],
    "anthropic_key": ["The Claude API rejects my key {v}, any idea why?",
                      "Here is the key I set in the environment: {v}",
                      "Our team shares the key {v}, is that a problem?"],
    "stripe_key": ["Webhook signing works, but calls with {v} fail.",
                   "Is {v} a live or test key? I'm not sure which one I deployed.",
                   "The checkout page was built with the key {v}."],
    "high_entropy": ["The password is {v}, please don't share it.",
                     "I reset it and the new shared secret is {v}.",
                     "Temporary admin password: {v}",
                     "The Wi-Fi password for the event is {v}."],
}

LABELS = {  # en, fr, es, de, ja
    "email": ["Email", "Adresse e-mail", "Correo electrónico", "E-Mail-Adresse", "メールアドレス"],
    "phone": ["Phone", "Téléphone", "Teléfono", "Telefonnummer", "電話番号"],
    "card": ["Card number", "Numéro de carte", "Número de tarjeta", "Kartennummer", "カード番号"],
    "iban": ["IBAN", "IBAN", "IBAN", "IBAN", "IBAN"],
    "ssn": ["SSN", "Numéro de sécurité sociale américain (SSN)", "Número de seguro social (SSN)",
            "US-Sozialversicherungsnummer (SSN)", "社会保障番号（SSN）"],
    "nino": ["National Insurance no.", "Numéro National Insurance (Royaume-Uni)", "Número de National Insurance",
             "Britische Versicherungsnummer (NINO)", "英国国民保険番号"],
    "dni": ["DNI", "DNI espagnol", "DNI", "Spanische Ausweisnummer (DNI)", "DNI番号"],
    "ipv4": ["Server IP", "Adresse IP du serveur", "Dirección IP del servidor", "IP-Adresse des Servers", "サーバーのIPアドレス"],
    "ipv6": ["IPv6 address", "Adresse IPv6", "Dirección IPv6", "IPv6-Adresse", "IPv6アドレス"],
    "private_key": ["Private key", "Clé privée", "Clave privada", "Privater Schlüssel", "秘密鍵"],
    "jwt": ["Session token", "Jeton de session", "Token de sesión", "Sitzungstoken", "セッショントークン"],
    "aws_key": ["AWS access key ID", "Clé d'accès AWS", "Clave de acceso de AWS", "AWS-Zugriffsschlüssel", "AWSアクセスキー"],
    "gcp_key": ["Google API key", "Clé d'API Google", "Clave de API de Google", "Google-API-Schlüssel", "Google APIキー"],
    "github_token": ["GitHub token", "Jeton GitHub", "Token de GitHub", "GitHub-Token", "GitHubトークン"],
    "gitlab_token": ["GitLab token", "Jeton GitLab", "Token de GitLab", "GitLab-Token", "GitLabトークン"],
    "slack_token": ["Slack bot token", "Jeton du bot Slack", "Token del bot de Slack", "Slack-Bot-Token", "Slackボットトークン"],
    "openai_key": ["OpenAI key", "Clé OpenAI", "Clave de OpenAI", "OpenAI-Schlüssel", "OpenAIのAPIキー"],
    "anthropic_key": ["Anthropic key", "Clé API Anthropic", "Clave de API de Anthropic", "Anthropic-API-Schlüssel", "AnthropicのAPIキー"],
    "stripe_key": ["Stripe key", "Clé Stripe", "Clave de Stripe", "Stripe-Schlüssel", "Stripeのシークレットキー"],
    "high_entropy": ["Password", "Mot de passe", "Contraseña", "Passwort", "パスワード"],
}

ENV_KEYS = {
    "email": ["ADMIN_EMAIL", "ALERT_EMAIL_TO", "SMTP_FROM"],
    "phone": ["ONCALL_PHONE", "SMS_ALERT_NUMBER"],
    "ipv4": ["DB_HOST", "REDIS_HOST", "UPSTREAM_ADDR", "BIND_ADDRESS"],
    "ipv6": ["BIND_ADDR_V6", "DNS_SERVER_V6", "UPSTREAM_V6"],
    "jwt": ["SERVICE_TOKEN", "INTERNAL_API_JWT"],
    "aws_key": ["AWS_ACCESS_KEY_ID"],
    "gcp_key": ["GOOGLE_MAPS_API_KEY", "FIREBASE_API_KEY", "GCP_API_KEY"],
    "github_token": ["GITHUB_TOKEN", "GH_TOKEN"],
    "gitlab_token": ["GITLAB_TOKEN", "CI_PUSH_TOKEN"],
    "slack_token": ["SLACK_BOT_TOKEN", "SLACK_TOKEN"],
    "openai_key": ["OPENAI_API_KEY"],
    "anthropic_key": ["ANTHROPIC_API_KEY"],
    "stripe_key": ["STRIPE_SECRET_KEY", "STRIPE_API_KEY"],
    "high_entropy": ["SESSION_SECRET", "JWT_SIGNING_SECRET", "DB_PASSWORD", "WEBHOOK_SECRET", "CLIENT_SECRET",
                     "AWS_SECRET_ACCESS_KEY"],
}
CONFIG_DETS = list(ENV_KEYS)
ENV_FILLER = ["PORT=8080", "LOG_LEVEL=info", "NODE_ENV=production", "REGION=eu-west-1",
              "FEATURE_FLAGS=beta_ui,fast_checkout", "DB_NAME=orders", "CACHE_TTL_SECONDS=300",
              'APP_NAME="Café Órbita"', "TIMEZONE=Europe/Madrid", "MAX_WORKERS=4", "DEBUG=false"]

LOG_MSG = {
    "email": ["INFO  auth: login ok email={v}", "INFO  mailer: sent password reset to {v}",
              "WARN  mailer: bounce from {v} (mailbox full)"],
    "phone": ['INFO  sms: dispatched to="{v}" status=queued', 'INFO  otp: code requested phone="{v}"'],
    "card": ["WARN  payments: raw card number in request body: {v}", "DEBUG payments: authorise pan={v} amount=42.50 EUR"],
    "iban": ["INFO  sepa: mandate created iban={v}", "INFO  payouts: scheduled transfer to {v}"],
    "ssn": ["INFO  kyc: identity check passed ssn={v}", "DEBUG onboarding: payload ssn={v} state=CA"],
    "nino": ["INFO  payroll: hmrc lookup nino={v} result=match"],
    "dni": ["INFO  verificación: identidad confirmada dni={v}", "DEBUG checkin: guest document dni={v}"],
    "ipv4": ["INFO  http: connection from {v} accepted", "WARN  ratelimit: client {v} exceeded 100 req/min",
             "ERROR upstream: {v} connect timeout after 5s"],
    "ipv6": ["INFO  http: connection from [{v}] accepted", "WARN  health: upstream {v} marked down"],
    "jwt": ["WARN  auth: token rejected token={v} reason=expired", "DEBUG http: Authorization: Bearer {v}"],
    "aws_key": ["DEBUG botocore: found credentials in environment, access key {v}",
                "ERROR s3: InvalidAccessKeyId for key {v}"],
    "gcp_key": ["ERROR geocode: request denied for key={v} (referer not allowed)"],
    "github_token": ["ERROR deploy: push rejected, token {v} lacks workflow scope"],
    "gitlab_token": ["ERROR ci: authentication failed with PRIVATE-TOKEN {v}"],
    "slack_token": ["ERROR notify: chat.postMessage failed token={v} error=invalid_auth"],
    "openai_key": ["ERROR llm: AuthenticationError: Incorrect API key provided: {v}"],
    "anthropic_key": ["DEBUG llm: anthropic client init api_key={v}"],
    "stripe_key": ["ERROR billing: Invalid API Key provided: {v}"],
    "high_entropy": ["DEBUG config: loaded session_secret={v}", "DEBUG config: db password={v}"],
}
LOG_FILLER = ["INFO  worker: started pid=4121", "DEBUG cache: miss key=user:profile", "WARN  db: slow query took 1532ms",
              "INFO  http: GET /api/v1/orders 200 12ms", "INFO  scheduler: job nightly-export finished",
              "INFO  i18n: locale fr-FR loaded (café, crème brûlée)"]

CODE_LINE = {
    "email": ['ADMIN_EMAIL = "{v}"', 'send_mail(to="{v}", subject="Weekly report")'],
    "phone": ['notify_sms("{v}", "Your order has shipped")'],
    "card": ['charge(card_number="{v}", amount=1999, currency="eur")'],
    "iban": ['assert is_valid_iban("{v}")', 'payout = Payout(iban="{v}", amount_cents=12500)'],
    "ssn": ['employee = Employee(name="Zoë Whitfield", ssn="{v}")'],
    "nino": ['record["ni_number"] = "{v}"'],
    "dni": ['cliente = {"nombre": "José Álvarez", "dni": "{v}"}'],
    "ipv4": ['conn = psycopg.connect(host="{v}", dbname="orders")', 'sock.connect(("{v}", 6379))'],
    "ipv6": ['server.bind(("{v}", 8443))'],
    "private_key": ['PRIVATE_KEY = """{v}"""'],
    "jwt": ['headers = {"Authorization": "Bearer {v}"}', 'TOKEN = "{v}"'],
    "aws_key": ['s3 = boto3.client("s3", aws_access_key_id="{v}", region_name="eu-west-1")'],
    "gcp_key": ['gmaps = googlemaps.Client(key="{v}")'],
    "github_token": ['gh = Github("{v}")'],
    "gitlab_token": ['gl = gitlab.Gitlab("https://gitlab.example.com", private_token="{v}")'],
    "slack_token": ['slack = WebClient(token="{v}")'],
    "openai_key": ['client = OpenAI(api_key="{v}")'],
    "anthropic_key": ['claude = anthropic.Anthropic(api_key="{v}")'],
    "stripe_key": ['stripe.api_key = "{v}"'],
    "high_entropy": ['app.config["SECRET_KEY"] = "{v}"', 'CLIENT_SECRET = "{v}"'],
}
CODE_PREAMBLE = ["import logging\nimport os\n\nlog = logging.getLogger(__name__)",
                 "import logging\n\nlog = logging.getLogger(__name__)\nTIMEOUT_S = 30",
                 "import logging\nimport os\n\nlog = logging.getLogger(__name__)\n# TODO: move these into the vault",
                 "import logging\n\n# ¡Ojo! valores de prueba, no usar en producción\nlog = logging.getLogger(__name__)"]

TECH_DETS = set(CONFIG_DETS) | {"private_key"}


def line_join(b: Builder, values, render, sep="\n"):
    for i, (d, v) in enumerate(values):
        if i and not (sep == " " and b.parts[-1].endswith("\n")):
            b.t(sep)
        render(d, v)


def frame_ticket(rng, b, values):
    b.t(rng.choice(["Please draft a friendly reply to this support ticket:\n\n",
                    "Summarise this ticket in two sentences and suggest next steps:\n\n",
                    "Classify the urgency of this ticket (low/medium/high) and explain why:\n\n"]))
    b.t("Subject: " + rng.choice(["Problem with my account", "Billing question", "Urgent: access issue",
                                 "Réclamation – commande en retard", "Question about my data", "Help needed 🙏"]) + "\n\n")
    b.t(rng.choice(["Hello,\n\n", "Hi team,\n\n", "Dear support,\n\n", "Bonjour,\n\n", "Hallo zusammen,\n\n"]))
    line_join(b, values, lambda d, v: b.tpl(rng.choice(PROSE[d]), d, v), sep=rng.choice([" ", "\n"]))
    b.t("\n\n" + rng.choice(["Thanks,", "Kind regards,", "Merci d'avance,", "Cheers,"]) + "\n" + rng.choice(NAMES))


def frame_email(rng, b, values):
    name = rng.choice(NAMES)
    b.t(rng.choice(["Summarise this email I received:\n\n", "Write a short, formal reply to this email:\n\n",
                    "What is this person asking for? Email below.\n\n"]))
    b.t(f"From: {name}")
    rest = list(values)
    for i, (d, v) in enumerate(values):
        if d == "email":
            b.t(" <")
            b.v(d, v)
            b.t(">")
            rest.pop(i)
            break
    b.t("\nSubject: " + rng.choice(["Follow-up", "Re: your request", "Änderung meiner Daten", "Quick question"]) + "\n\n")
    b.t(rng.choice(["Hi,\n\n", "Good morning,\n\n", "Hola,\n\n"]))
    if not rest:
        b.t("Just confirming that this is my current address for the paperwork.")
    line_join(b, rest, lambda d, v: b.tpl(rng.choice(PROSE[d]), d, v), sep=" ")
    b.t("\n\nBest regards,\n" + name)


def frame_chat(rng, b, values):
    b.t(rng.choice(["hey 👋 ", "ok so ", "quick question 🙏 ", "ugh. ", "bonjour ! ", "hi! ", "😅 sorry, me again. "]))
    line_join(b, values, lambda d, v: b.tpl(rng.choice(PROSE[d]), d, v), sep=" ")
    b.t(rng.choice([" any ideas?", " thx!", " what should I do? 😬", " merci 🙂", "", " help pls"]))


def frame_form(rng, b, values):
    b.t(rng.choice(["Extract the fields from this form as JSON with snake_case keys:\n\n",
                    "Check this onboarding form for missing fields:\n\n",
                    "Turn this into a markdown table:\n\n"]))
    b.t(f"Full name: {rng.choice(NAMES)}\n")
    b.t(f"City: {rng.choice(['München', 'São Paulo', 'Kraków', 'Zürich', 'Málaga', 'Montréal', '東京'])}\n")

    def render(d, v):
        b.t(f"{LABELS[d][0]}:" + ("\n" if d == "private_key" else " "))
        b.v(d, v)
    line_join(b, values, render)
    b.t("\nSigned: yes")


def frame_translate(rng, b, values):
    lang = rng.randrange(1, 5)   # 1 fr, 2 es, 3 de, 4 ja
    b.t("Translate this message into English, keeping every detail exactly as written:\n\n")
    name = rng.choice(JA_NAMES if lang == 4 else NAMES)
    b.t({1: f"Bonjour, je m'appelle {name}. Voici les informations demandées :\n",
         2: f"Hola, soy {name}. Les envío los datos que me pidieron:\n",
         3: f"Guten Tag, hier sind die gewünschten Angaben von {name}:\n",
         4: f"お世話になっております。{name}です。ご依頼の情報をお送りします。\n"}[lang])

    def render(d, v):
        label = LABELS[d][lang]
        if lang == 4:
            b.t(f"・{label}：" + ("\n" if d == "private_key" else ""))
        else:
            b.t(f"- {label}{' :' if lang == 1 else ':'}" + ("\n" if d == "private_key" else " "))
        b.v(d, v)
    line_join(b, values, render)
    b.t({1: "\nMerci d'avance et bonne journée !", 2: "\n¡Muchas gracias!",
         3: "\nVielen Dank und freundliche Grüße.", 4: "\nよろしくお願いいたします。"}[lang])


def env_value(v):
    return f'"{v}"' if " " in v else v


def frame_env(rng, b, values):
    b.t(rng.choice(["Why does my app ignore these settings? Here's my .env:\n\n```\n",
                    "Convert this .env file into a Kubernetes Secret manifest:\n\n```\n",
                    "Sort these variables alphabetically and group them by service:\n\n```\n"]))
    filler = rng.sample(ENV_FILLER, rng.randint(1, 3))
    for f in filler[:1]:
        b.t(f + "\n")

    def render(d, v):
        key = rng.choice(ENV_KEYS[d])
        b.t(f"{key}=" + ('"' if " " in v else ""))
        b.v(d, v)
        b.t('"' if " " in v else "")
    line_join(b, values, render)
    for f in filler[1:]:
        b.t("\n" + f)
    b.t("\n```")


def frame_yaml(rng, b, values):
    b.t(rng.choice(["Is this docker-compose file valid? The api container exits immediately.\n\n```yaml\n",
                    "Rewrite this config as TOML:\n\n```yaml\n"]))
    b.t("services:\n  api:\n    image: ghcr.io/acme/api:2.4\n    environment:\n")

    def render(d, v):
        key = rng.choice(ENV_KEYS[d])
        quote = " " in v or ":" in v
        b.t(f"      {key}: " + ('"' if quote else ""))
        b.v(d, v)
        b.t('"' if quote else "")
    line_join(b, values, render)
    b.t("\n      LOG_LEVEL: debug\n```")


def frame_json(rng, b, values):
    b.t(rng.choice(["Here's my config.json, the service crashes on startup. What's wrong?\n\n```json\n",
                    "Validate this JSON and tell me which keys look sensitive:\n\n```json\n"]))
    b.t('{\n  "service": "checkout",\n')

    def render(d, v):
        b.t(f'  "{rng.choice(ENV_KEYS[d]).lower()}": "')
        b.v(d, v)
        b.t('"')
    line_join(b, values, render, sep=",\n")
    b.t(',\n  "retries": 3\n}\n```')


def frame_log(rng, b, values):
    b.t(rng.choice(["Can you explain what's going wrong in these logs?\n\n```\n",
                    "Our on-call got paged for this. What happened? Logs:\n\n",
                    "Summarise these log lines for the incident report:\n\n```\n"]))
    fenced = b.parts[-1].endswith("```\n")
    day, secs = rng.randint(10, 28), rng.randint(0, 20 * 3600)
    lines = [("f", f) for f in rng.sample(LOG_FILLER, rng.randint(1, 3))]
    for dv in values:
        lines.insert(rng.randint(0, len(lines)), ("v", dv))
    for i, (kind, x) in enumerate(lines):
        if i:
            b.t("\n")
        secs += rng.randint(1, 90)
        b.t(f"2024-03-{day}T{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}Z ")
        if kind == "f":
            b.t(x)
        else:
            b.tpl(rng.choice(LOG_MSG[x[0]]), x[0], x[1])
    b.t("\n```" if fenced else "")


def frame_code(rng, b, values):
    b.t(rng.choice(["This script throws an error when I run it, can you fix it?\n\n```python\n",
                    "Refactor this so the credentials come from environment variables:\n\n```python\n",
                    "Review this code before I push it:\n\n```python\n"]))
    b.t(rng.choice(CODE_PREAMBLE) + "\n\n")
    line_join(b, values, lambda d, v: b.tpl(rng.choice(CODE_LINE[d]), d, v))
    b.t("\n\ndef main():\n    log.info(\"starting\")\n```")


FRAMES = {
    "ticket": frame_ticket, "email": frame_email, "chat": frame_chat, "form": frame_form,
    "translate": frame_translate, "env": frame_env, "yaml": frame_yaml, "json": frame_json,
    "log": frame_log, "code": frame_code,
}


def choose_frame(rng, dets):
    tech = all(d in TECH_DETS for d in dets)
    weights = {"ticket": 2, "email": 2, "chat": 2, "form": 1.5, "translate": 1.5}
    if all(d in CONFIG_DETS for d in dets):
        weights.update(env=2.5, yaml=1.5, json=1.5)
    if "private_key" not in dets:
        weights["log"] = 3 if tech else 1.5
    weights["code"] = 3 if tech else 1
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def check_positive(text, spans):
    """Every reference finding must be covered by an annotated span (same detector;
    any span for generic high-entropy runs inside structured values)."""
    for det, s, e in scan(text):
        ok = any(sp["_cs"] <= s and e <= sp["_ce"] and (sp["detector"] == det or det == "high_entropy")
                 for sp in spans)
        if not ok:
            return f"unannotated {det}: {text[s:e]!r}"
    return None


def make_positive(rng, dets):
    for _ in range(500):
        values = [(d, GEN[d](rng)) for d in dets]
        frame = choose_frame(rng, dets)
        b = Builder()
        FRAMES[frame](rng, b, values)
        text = b.text()
        if check_positive(text, b.spans) is None:
            return text, b.spans, frame
    raise AssertionError(f"could not build a clean positive for {dets}")


def plan_positive_items(rng):
    """Per split: each detector planted PLANTED_PER_SPLIT times, items of 1-3 distinct detectors."""
    plan = []
    for split in SPLITS:
        remaining = {d: PLANTED_PER_SPLIT for d in DETECTORS}
        total = PLANTED_PER_SPLIT * len(DETECTORS)
        n3 = n2 = n1 = total // 6
        sizes = [1] * n1 + [2] * n2 + [3] * n3
        assert sum(sizes) == total
        rng.shuffle(sizes)
        for k in sizes:
            avail = [d for d in DETECTORS if remaining[d] > 0]
            rng.shuffle(avail)
            avail.sort(key=lambda d: -remaining[d])   # stable: random among ties
            chosen = avail[:k]
            for d in chosen:
                remaining[d] -= 1
            rng.shuffle(chosen)
            plan.append((split, chosen))
        assert all(v == 0 for v in remaining.values()), remaining
    return plan


# ---------------------------------------------------------------------------
# negatives: tricky texts with no real item of any detector
# ---------------------------------------------------------------------------

def d_(rng, n):
    return rs(rng, DIGITS, n)


def neg_luhn_fail(rng):
    while True:
        n = rng.choice("123456789") + d_(rng, 15)
        if not luhn_ok(n):
            break
    fmt = rng.choice(["plain", "space", "dash"])
    shown = n if fmt == "plain" else group(n, [4, 4, 4, 4], " " if fmt == "space" else "-")
    t = rng.choice([
        f"My order number is {shown} and it still hasn't shipped. Can you write a polite follow-up to the shop?",
        f"Reference {shown}: the bank says the transfer is pending. What does 'pending' usually mean for SEPA transfers?",
        f"Turn this into a table: order {shown}, 3 items, total 84.20 EUR, status delivered.",
        f"Our ERP generates 16-digit order IDs like {shown}. Is that enough to avoid collisions at ten million orders a year?",
        f"Bestellnummer {shown} – bitte auf Englisch zusammenfassen: Die Lieferung kommt leider später.",
    ])
    return t, f"16-digit order/reference number ({fmt}) that fails the Luhn check"


def neg_version(rng):
    a, b, c, d = rng.randint(1, 9), rng.randint(0, 20), rng.randint(0, 30), rng.randint(0, 99)
    t = rng.choice([
        f"After upgrading to v{a}.{b}.{c}.{d} the app crashes on start. What changed between minor versions?",
        f"My PC says version 10.0.{rng.randint(19041, 22631)}.{rng.randint(1, 4000)}. Is that Windows 10 or 11?",
        f"Chrome {rng.randint(110, 125)}.0.{rng.randint(5000, 6500)}.{rng.randint(50, 300)} keeps freezing on YouTube. Fixes?",
        f"The changelog for v{a}.{b}.{c}.{d} mentions 'breaking: config loader'. Should I wait before upgrading?",
        f"Which .NET assembly version should I use, {a}.{b}.{rng.randint(1000, 9999)}.{rng.randint(1000, 9999)} or the older one?",
    ])
    return t, "version string that looks like a dotted quad (v-prefixed or with a part > 255)"


def neg_ip_overflow(rng):
    bad = rng.choice([f"{rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
                      f"192.168.{rng.randint(0, 255)}.{rng.randint(256, 999)}",
                      f"10.{rng.randint(256, 400)}.0.1", "300.1.2.3", "256.256.256.256"])
    t = rng.choice([
        f"Why does ping say 'unknown host' for {bad}?",
        f"Is {bad} a valid IPv4 address? My validator accepts it.",
        f"A student wrote {bad} on the networking quiz. Explain the mistake kindly.",
        f"¿Por qué mi router rechaza la dirección {bad}?",
    ])
    return t, "dotted quad with an octet > 255"


def neg_secret_identifier(rng):
    ident = rng.choice(["sk_test_helper", "sk_live_mode_enabled", "get_sk_test_data", "sk_test_mode_strict",
                        "rk_live_reload", "is_sk_live_configured", "ghp_token_name", "load_sk_test_fixtures",
                        "sk_live_keys_rotated_at", "akia_prefix_len"])
    t = rng.choice([
        f"What does this do?\n\n```python\nfrom sk_test_helper import make_fixture\n\ndef {ident}():\n    return make_fixture('orders')\n```",
        f"Why is {ident} always False here?\n\n```python\n{ident} = os.getenv('LIVE') == '1'\n```",
        f"Rename {ident} to something clearer and update the docstring.",
        f"Our linter flags the name {ident} as a leaked secret. Is that a false positive?",
        f"Write a pytest fixture called {ident} that returns an empty dict.",
        "Should I use sk-learn or statsmodels for a simple logistic regression? (I know the package is really called scikit-learn.)",
        "pip install scikit-learn fails on Python 3.13. Is sk-learn the same package?",
        "Explain this shell alias: alias ghp_list='gh api user/keys --paginate'",
    ])
    return t, "identifiers containing provider prefixes (sk_test_, sk_live_, sk-, ghp_) that are not keys"


def neg_regex_prefix(rng):
    t = rng.choice([
        'Is this regex good enough to catch GitHub tokens?\n\n```python\nGH = re.compile(r"ghp_[A-Za-z0-9]{36}")\n```',
        'Is this regex good enough to catch GitLab tokens?\n\n```python\nGL = re.compile(r"glpat-[A-Za-z0-9_-]{20}")\n```',
        "Explain this pre-commit rule: `AKIA[0-9A-Z]{16}` plus `ASIA[0-9A-Z]{16}`. Which keys does it miss?",
        "Write a test for this check:\n\n```python\nif token.startswith((\"sk_live_\", \"rk_live_\")):\n    raise LeakedKey()\n```",
        "Our scanner looks for the prefixes xoxb-, xoxp-, glpat- and AIza. Are there other common ones?",
        "Document the format: Anthropic keys start with `sk-ant-api03-`, OpenAI project keys with `sk-proj-`. Write a table.",
        "What does the `github_pat_` prefix mean compared with `ghp_`? Keep it short.",
        "Translate this gitleaks rule description to Spanish: 'Slack bot tokens begin with xoxb- followed by digit groups.'",
        "Why does `/AIza[0-9A-Za-z_-]{35}/` match Google keys but not OAuth client secrets?",
        "Make this grep case-sensitive: grep -rE 'sk_(live|test)_[0-9a-zA-Z]{24}' src/",
    ])
    return t, "detector regexes / documented key prefixes without any actual key"


def neg_data_uri(rng):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rbytes(rng, rng.randint(150, 380))
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    t = rng.choice([
        f'Why doesn\'t this image show up in my HTML?\n\n<img alt="logo" src="{uri}">',
        f"Is it bad practice to inline icons like this in CSS?\n\n.icon {{ background: url({uri}); }}",
        f"Decode what kind of file this is: {uri}",
    ])
    return t, "long base64 image data URI (random-looking, but not a secret)"


def gen_uuid(rng):
    h = list(rs(rng, HEX, 32))
    h[12] = "4"
    h[16] = rng.choice("89ab")
    h = "".join(h)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def neg_uuid(rng):
    u, u2 = gen_uuid(rng), gen_uuid(rng)
    t = rng.choice([
        f"Request id {u} failed with a 502. What could cause that behind a load balancer?",
        f"Are UUIDs like {u} safe to expose in URLs, e.g. /orders/{u2}?",
        f"Postgres: how do I index a column holding values such as {u}?",
        f"La commande {u} est bloquée. Que dois-je vérifier ?",
    ])
    return t, "UUIDs"


def neg_git_sha(rng):
    sha = rs(rng, HEX, 40)
    t = rng.choice([
        f"git revert {sha} gives a conflict in main.rs, how do I resolve it?",
        f"What does 'fatal: bad object {sha}' mean after a shallow clone?",
        f"Write a commit message for the fixup of {sha[:12]} (full hash {sha}).",
    ])
    return t, "git commit SHA (40 hex)"


def neg_sha256(rng):
    h1 = hashlib.sha256(rbytes(rng, 16)).hexdigest()
    h2 = hashlib.sha256(rbytes(rng, 16)).hexdigest()
    t = rng.choice([
        f"The sha256 of my download is {h1} but the website lists {h2}. Is the file corrupted?",
        f"Pin this image by digest: nginx@sha256:{h1}. What's the advantage over tags?",
        f"Explain what this lockfile line means: integrity sha256-{h1}",
    ])
    return t, "sha256 hex digests"


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


def neg_dates(rng):
    y, m, d = rng.randint(2019, 2026), rng.randint(1, 12), rng.randint(1, 28)
    t = rng.choice([
        f"Normalise these dates to ISO format: {d:02d}/{m:02d}/{y}, {m:02d}.{d:02d}.{y}, {MONTHS[m - 1]} {d}, {y}.",
        f"How many days are there between {y}-{m:02d}-{d:02d} and {y + 1}-01-15?",
        f"Mi contrato empieza el {d:02d}/{m:02d}/{y}. ¿Cuándo termina el periodo de prueba de seis meses?",
        f"Is {m:02d}.{d:02d}.{y} a US or European date format? The spreadsheet shows {y}-{m:02d}-{d:02d}.",
    ])
    return t, "dates in several formats"


def neg_times(rng):
    h, m, s = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    t = rng.choice([
        f"Convert {h:02d}:{m:02d}:{s:02d} UTC to Tokyo time (東京).",
        f"The job started at {h:02d}:{m:02d}:{s:02d} and finished at 23:59:{rng.randint(10, 59)}. How long did it run?",
        f"My Strava split says {rng.randint(3, 6)}:{rng.randint(10, 59)}/km for a 10 km run that took 0:{rng.randint(40, 59)}:{rng.randint(10, 59)}. Is that consistent?",
    ])
    return t, "clock times / durations with colons"


def neg_mac(rng):
    octs = [f"{rng.randint(0, 255):02X}" for _ in range(6)]
    mac = rng.choice([":".join(octs), "-".join(octs), ":".join(o.lower() for o in octs)])
    t = rng.choice([
        f"My router's MAC filter lists {mac}. How do I find which device that is?",
        f"Wake-on-LAN doesn't work for the NAS with MAC {mac}. What should I check?",
        f"Is {mac} a locally administered MAC address?",
    ])
    return t, "MAC address (six hex pairs, not IPv6)"


def neg_cpp_scope(rng):
    t = rng.choice([
        "Why does std::vector<int>::iterator become invalid after push_back?",
        "In Rust, what's the difference between Foo::Bar and Self::Bar inside an impl block?",
        "Is std::collections::HashMap faster than BTreeMap for 1000 string keys?",
        "Explain std::chrono::steady_clock::now() vs std::chrono::system_clock::now().",
        "PHP: when do I need Foo::class instead of the string 'App\\Models\\Foo'?",
        "Ruby: what does ActiveRecord::Base::establish_connection do?",
        "C++: should I write std::string::npos or just -1 when find() fails?",
        "Rust: why can't I call Vec::new() inside a const fn on my toolchain?",
        "Perl: what's the difference between Data::Dumper and JSON::PP for debugging?",
        "TypeScript has no :: operator, so how do I port Config::Loader::load from C++?",
    ])
    return t, "C++/Rust/PHP/Ruby scope operators (::) that are not IPv6"


def isbn13(rng):
    body = rng.choice(["978", "979"]) + d_(rng, 9)
    s = sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(body))
    full = body + str((10 - s % 10) % 10)
    return f"{full[:3]}-{full[3]}-{full[4:6]}-{full[6:12]}-{full[12]}"


def isbn10(rng):
    body = d_(rng, 9)
    s = sum(int(c) * (10 - i) for i, c in enumerate(body))
    chk = (11 - s % 11) % 11
    full = body + ("X" if chk == 10 else str(chk))
    return f"{full[0]}-{full[1:4]}-{full[4:9]}-{full[9]}"


def neg_isbn(rng):
    a, b = isbn13(rng), isbn10(rng)
    t = rng.choice([
        f"Find me the edition with ISBN {a}, is it the paperback?",
        f"Convert ISBN-10 {b} to ISBN-13 and show the check-digit calculation.",
        f"Our library catalogue has ISBN {a} and {b} for the same title. Can that be right?",
    ])
    return t, "ISBN-10/ISBN-13 with hyphens"


def neg_iban_bad(rng):
    cc = rng.choice(list(IBAN_LENGTHS))
    good = make_iban(cc, gen_bban(rng, cc))
    while True:
        bad = good[:2] + f"{rng.randint(2, 98):02d}" + good[4:]
        if not iban_ok(bad):
            break
    shown = " ".join(bad[i:i + 4] for i in range(0, len(bad), 4)) if rng.random() < 0.5 else bad
    t = rng.choice([
        f"Our finance tool rejects the IBAN {shown}. Can you tell me why?",
        f"A supplier sent {shown} as their bank account. The check digits seem off, what should I ask them?",
        f"Warum wird die IBAN {shown} als ungültig angezeigt?",
    ])
    return t, "IBAN-shaped string with a wrong mod-97 checksum"


def neg_ssn_invalid(rng):
    v = rng.choice([f"000-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}",
                    f"666-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}",
                    f"{rng.randint(900, 999)}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}",
                    f"{rng.randint(100, 599)}-00-{rng.randint(1, 9999):04d}",
                    f"{rng.randint(100, 599)}-{rng.randint(1, 99):02d}-0000"])
    t = rng.choice([
        f"Is {v} a valid SSN? The payroll form rejects it.",
        f"Why would the IRS e-file system refuse the number {v}?",
        f"Write a validator that rejects SSNs like {v}.",
    ])
    return t, "SSN-shaped but invalid (area 000/666/9xx, group 00 or serial 0000)"


def neg_dni_wrong(rng):
    n = rng.randint(1000000, 99999999)
    wrong = DNI_LETTERS[(n % 23 + rng.randint(1, 22)) % 23]
    v = f"{n:08d}{'-' if rng.random() < 0.4 else ''}{wrong}"
    t = rng.choice([
        f"¿Por qué la web de Hacienda dice que el DNI {v} no es válido?",
        f"A customer entered DNI {v} and our form says the letter is wrong. How is the letter computed?",
        f"Comprueba si la letra del DNI {v} es correcta y explica el cálculo.",
    ])
    return t, "DNI with a wrong check letter"


def neg_email_no_tld(rng):
    u = rng.choice(["root", "admin", "postgres", "deploy", "ubuntu", "git"])
    h = rng.choice(["localhost", "buildbox", "db-primary", "intranet", "raspberrypi"])
    t = rng.choice([
        f"ssh {u}@{h} works from my laptop but not from CI. Why?",
        f"Cron mails go to {u}@{h} and nobody reads them. How do I forward them?",
        f"What does the prompt {u}@{h}:~$ tell me about my shell session?",
    ])
    return t, f"user@host without a TLD ({u}@{h})"


def neg_mentions(rng):
    t = rng.choice([
        "@alice can you review PR #482 before Friday? cc @dev-team",
        "npm install @types/node @angular/core fails with ERESOLVE. What's the fix?",
        "When should I use @staticmethod vs @classmethod in Python?",
        "Draft a Slack message: @here the deploy is paused until @marta.lopez confirms the rollback plan.",
        "In Kotlin, what does the @JvmStatic annotation do?",
        "Write a GitHub comment thanking @oguz-y and @chloe_m for the fix 🎉",
        "Twitter handle ideas for a bakery called Crème & Co? Something like @cremeandco.",
        "Spring: is @Autowired on a constructor still needed?",
        "How do I install @tanstack/react-query with pnpm?",
        "In a Discord server, how do I stop @everyone pings?",
    ])
    return t, "@mentions, scoped npm packages and decorators (no email)"


def neg_obfuscated_email(rng):
    f, l = rng.choice(EMAIL_FIRST), rng.choice(EMAIL_LAST)
    t = rng.choice([
        f"Write a short bio for our website ending with 'contact: {f} at example dot com'.",
        f"Is writing {f}.{l} [at] example [dot] org on my CV enough to stop spam bots?",
        f"Someone signs as {f}(at)example(dot)net. How do I reply to that?",
    ])
    return t, "obfuscated email placeholder (not a literal address)"


def neg_masked(rng):
    last4 = d_(rng, 4)
    t = rng.choice([
        f"My statement shows the card as **** **** **** {last4}. Which card is that if I have two Visas?",
        f"The form masks my SSN as XXX-XX-{last4}. Is that safe to share in an email?",
        "Replace <YOUR_OPENAI_API_KEY> in this snippet with a call to os.environ:\n\nclient = OpenAI(api_key=\"<YOUR_OPENAI_API_KEY>\")",
        "The docs say to set STRIPE_SECRET_KEY=sk_test_... but what do the dots stand for?",
        "Our config has AWS_ACCESS_KEY_ID=AKIA**************** in the README. Is a masked key like that a leak?",
        "The token in the screenshot is shown as eyJhbGciOi...<snip>. Can you tell the algorithm from that?",
        f"The dashboard shows the key as sk_live_••••••••••••{last4}. Can I recover the full key?",
    ])
    return t, "masked / placeholder values (asterisks, bullets, <YOUR_KEY>, ...)"


LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
         "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex "
         "ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu "
         "fugiat nulla pariatur.")


def neg_lorem(rng):
    words = LOREM.split()
    start = rng.randint(0, 20)
    chunk = " ".join(words[start:start + rng.randint(15, 40)])
    t = rng.choice([f"Translate this into English: {chunk}",
                    f"Is this placeholder text long enough for a landing page hero? \"{chunk}\"",
                    f"Count the words in: {chunk}"])
    return t, "lorem ipsum placeholder text"


def neg_math(rng):
    c = rng.choice(["3.14159265358979", "2.718281828459045", "1.4142135623730951", "1.618033988749895",
                    "0.5772156649015329", "6.02214076e23", "1.602176634e-19", "2.302585092994046"])
    t = rng.choice([f"Why does Python print {c} instead of an exact value?",
                    f"Round {c} to 4 significant figures and explain.",
                    f"Is {c} * 2 exactly representable as a double?"])
    return t, "mathematical constants with long digit runs"


def neg_long_identifier(rng):
    w = rng.choice(["pneumonoultramicroscopicsilicovolcanoconiosis", "antidisestablishmentarianism",
                    "get_user_account_settings_by_identifier", "MAX_CONCURRENT_CONNECTIONS_PER_UPSTREAM",
                    "AbstractSingletonProxyFactoryBean", "InternationalizationConfigurationLoader",
                    "should_retry_idempotent_requests_on_timeout", "Donaudampfschifffahrtsgesellschaftskapitän"])
    t = rng.choice([f"Is '{w}' too long as a name? Suggest a shorter one.",
                    f"How do you pronounce {w}?",
                    f"Convert {w} to camelCase, snake_case and kebab-case."])
    return t, "long words / identifiers over 24 characters (no digits)"


def neg_file_path(rng):
    p = rng.choice(["/var/log/nginx/access.log", "C:\\Users\\José\\Documents\\Facturas\\2024\\marzo.xlsx",
                    "~/.ssh/id_ed25519", "~/.aws/credentials", "/etc/letsencrypt/live/example.com/privkey.pem",
                    "src/components/CheckoutForm/__tests__/CheckoutForm.test.tsx", "/home/ana/.config/gcloud/"])
    t = rng.choice([f"Permission denied when reading {p}. What are the right permissions?",
                    f"Should {p} be in .gitignore?",
                    f"How do I open {p} from the terminal?"])
    return t, "file paths (including paths to key files, without key material)"


def neg_url(rng):
    u = rng.choice(["https://example.com/docs/getting-started?lang=fr#install",
                    "https://shop.example.org/products/espresso-machine?ref=newsletter&utm_source=mail",
                    "http://intranet.example.net:8080/wiki/Onboarding_(Español)",
                    "https://example.com/api/v2/users/42/orders?page=3&per_page=50",
                    "https://maps.example.com/place/Café+de+Flore/@48.854,2.333,17z"])
    t = rng.choice([f"Why does {u} return 404 for some users?",
                    f"Shorten this URL for a tweet: {u}",
                    f"Explain each part of this URL: {u}"])
    return t, "URLs without credentials"


def neg_hex_colour(rng):
    cs = [f"#{rs(rng, '0123456789ABCDEF', 6)}" for _ in range(3)]
    t = rng.choice([f"Does {cs[0]} on {cs[1]} pass WCAG AA contrast?",
                    f"Suggest a palette around {cs[0]}, {cs[1]} and {cs[2]} for a bakery website 🥐.",
                    f"Convert {cs[0]} to RGB and HSL."])
    return t, "hex colour codes"


def neg_tracking(rng):
    ups = "1Z" + rs(rng, UPPER + DIGITS, 6) + d_(rng, 10)
    rm = rs(rng, UPPER, 2) + d_(rng, 9) + "GB"
    t = rng.choice([f"My UPS tracking number {ups} shows no updates for 5 days. What should I do?",
                    f"Royal Mail parcel {rm} says 'held at customs'. What does that mean?",
                    "Is 1Z999AA10123456784 a valid UPS tracking number format?"])
    return t, "parcel tracking numbers (UPS 1Z..., Royal Mail S10)"


def neg_product_code(rng):
    t = rng.choice([f"Do you know if SKU TSH-{rng.choice(['RED', 'BLK', 'NVY'])}-M-{d_(rng, 4)} runs small?",
                    f"Which is newer, the WX-{rng.randint(1000, 9999)}/B or the WX-{rng.randint(1000, 9999)}/C model?",
                    f"Write a product description for part no. A{d_(rng, 2)}-{d_(rng, 4)}-K (stainless hinge, 2 pcs).",
                    "Is the 74HC595N the same chip as the SN74HC595N?"])
    return t, "product / part codes"


def pem_body(rng, nbytes, prefix=b""):
    return wrap(base64.b64encode(prefix + rbytes(rng, nbytes)).decode(), 64)


def neg_public_key(rng):
    k = rng.randrange(4)
    if k == 0:
        block = "\n".join(["-----BEGIN PUBLIC KEY-----",
                           *pem_body(rng, 260, bytes.fromhex("30820122300d06092a864886f70d01010105000382010f00")),
                           "-----END PUBLIC KEY-----"])
        t = f"Is this the right format for the JWKS endpoint, or do I need a certificate?\n\n{block}"
    elif k == 1:
        block = "\n".join(["-----BEGIN CERTIFICATE-----", *pem_body(rng, rng.randint(300, 450), bytes.fromhex("3082")),
                           "-----END CERTIFICATE-----"])
        t = f"Nginx says 'PEM_read_bio_X509_AUX failed'. Here is the cert:\n\n{block}"
    elif k == 2:
        blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00 " + rbytes(rng, 32)
        key = f"ssh-ed25519 {base64.b64encode(blob).decode()} {rng.choice(['ana', 'deploy', 'kenji'])}@laptop"
        t = f"Add this public key to the server's authorized_keys for me, what's the command?\n\n{key}"
    else:
        block = "\n".join(["-----BEGIN PGP PUBLIC KEY BLOCK-----", "", *pem_body(rng, 280, b"\x99\x01\x0d\x04"),
                           "-----END PGP PUBLIC KEY BLOCK-----"])
        t = f"How do I import this public key into Thunderbird?\n\n{block}"
    return t, "public key / certificate material (not a private key)"


def neg_nino_invalid(rng):
    d = d_(rng, 6)
    p = rng.choice(["QQ", "BG", "GB", "NK", "TN", "ZZ", "DA", "FE", "AO", "VK"])
    s = rng.choice("ABCD")
    v = rng.choice([f"{p}{d}{s}", f"{p} {d[:2]} {d[2:4]} {d[4:]} {s}"])
    t = rng.choice([f"A test fixture uses the NI number {v}. Is that a valid format?",
                    f"Why does the payroll system reject the National Insurance number {v}?",
                    f"Explain which prefixes make {v} an invalid NINO."])
    return t, "NINO-shaped string with a disallowed prefix"


NEG_KINDS = {
    "luhn_fail_number": neg_luhn_fail, "version_string": neg_version, "ip_octet_overflow": neg_ip_overflow,
    "secret_like_identifier": neg_secret_identifier, "prefix_in_regex_or_docs": neg_regex_prefix,
    "base64_data_uri": neg_data_uri, "uuid": neg_uuid, "git_sha": neg_git_sha, "sha256_digest": neg_sha256,
    "date": neg_dates, "time": neg_times, "mac_address": neg_mac, "scope_operator": neg_cpp_scope,
    "isbn": neg_isbn, "iban_bad_checksum": neg_iban_bad, "ssn_invalid": neg_ssn_invalid,
    "dni_wrong_letter": neg_dni_wrong, "email_no_tld": neg_email_no_tld, "mention": neg_mentions,
    "obfuscated_email": neg_obfuscated_email, "masked_placeholder": neg_masked, "lorem_ipsum": neg_lorem,
    "math_constant": neg_math, "long_identifier": neg_long_identifier, "file_path": neg_file_path,
    "url_no_credentials": neg_url, "hex_colour": neg_hex_colour, "tracking_number": neg_tracking,
    "product_code": neg_product_code, "public_key_material": neg_public_key, "nino_invalid": neg_nino_invalid,
}
# random-looking base64 that is deliberately *not* a secret: generic high-entropy runs allowed
HIGH_ENTROPY_TRAPS = ("base64_data_uri", "public_key_material")


def make_negative(rng, kind, seen):
    for _ in range(500):
        text, why = NEG_KINDS[kind](rng)
        findings = [f for f in scan(text) if not (f[0] == "high_entropy" and kind in HIGH_ENTROPY_TRAPS)]
        if not findings and text not in seen:
            return text, f"trap:{kind}: {why}"
    raise AssertionError(f"could not build a clean negative for {kind}")


# ---------------------------------------------------------------------------
# build, write, self-check
# ---------------------------------------------------------------------------

def build():
    rng = random.Random(SEED)
    CYCLES.clear()
    items = []
    for split, dets in plan_positive_items(rng):
        text, spans, frame = make_positive(rng, dets)
        note = f"{frame}: " + ", ".join(sp["detector"] for sp in spans)
        items.append({"split": split, "kind": "positive", "text": text, "spans": spans, "note": note})
    seen = set()
    for kind in NEG_KINDS:
        splits = SPLITS * (NEG_PER_KIND // 2)
        rng.shuffle(splits)
        for split in splits:
            text, note = make_negative(rng, kind, seen)
            seen.add(text)
            items.append({"split": split, "kind": "negative", "text": text, "spans": [], "note": note})
    rng.shuffle(items)
    out = []
    for i, it in enumerate(items, 1):
        spans = [{k: sp[k] for k in ("detector", "start", "end", "value")} for sp in it["spans"]]
        out.append({"id": f"pii-{i:04d}", "split": it["split"], "kind": it["kind"], "text": it["text"],
                    "spans": spans, "note": it["note"]})
    return out


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def render(items):
    """Return ({filename: bytes}, counts) for the version directory."""
    data = "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items).encode("utf-8")
    sha = hashlib.sha256(data).hexdigest()

    counts = {}
    pos = [it for it in items if it["kind"] == "positive"]
    neg = [it for it in items if it["kind"] == "negative"]
    counts["positive"] = len(pos)
    counts["negative"] = len(neg)
    for d in DETECTORS:
        counts[f"positive.{d}"] = sum(sp["detector"] == d for it in pos for sp in it["spans"])
    for kind in NEG_KINDS:
        counts[f"negative.{kind}"] = sum(it["note"].startswith(f"trap:{kind}:") for it in neg)
    for s in SPLITS:
        counts[f"split.{s}"] = sum(it["split"] == s for it in items)
    n_spans = sum(len(it["spans"]) for it in items)

    description = (
        f"Synthetic corpus for measuring PII and secret detectors: {len(items)} chatbot-style prompts "
        f"(support tickets, pasted emails, chat, forms, translation requests, .env/YAML/JSON configs, logs, "
        f"Python snippets), {len(pos)} positives with {n_spans} annotated values across {len(DETECTORS)} detectors "
        f"({', '.join(DETECTORS)}) and {len(neg)} tricky negatives ({len(NEG_KINDS)} trap kinds) that contain no "
        f"real item. Spans use UTF-8 byte offsets; split 50/50 dev/test, stratified.")
    notes = (
        "Initial release. Generated by datasets/pii/generate.py (seed "
        f"{SEED}, standard library only; rerunning it rewrites this version byte-identically). All people, "
        "addresses and values are synthetic and fictional: card numbers are random Luhn-valid numbers with real "
        "IIN prefixes, IBANs random with correct mod-97 check digits, phone numbers from ranges reserved for "
        "fiction where one exists (US 555-01xx, Ofcom drama ranges, ARCEP fiction blocks, Berlin 23125xxx), emails "
        "on example.com/.org/.net, keys and tokens random strings in the providers' formats. Each detector has "
        f"{PLANTED_PER_SPLIT} planted values per split. Base64 data URIs and public keys/"
        "certificates are negatives by definition (random-looking but not secrets).")
    lines = [
        'name = "pii"',
        f"version = {VERSION}",
        f"description = {toml_str(description)}",
        'licence = "CC0-1.0"',
        f"items = {len(items)}",
        f"release_notes = {toml_str(notes)}",
        "",
        "[files]",
        f'"items.jsonl" = "{sha}"',
        "",
        "[counts]",
    ]
    lines += [f'"{k}" = {v}' for k, v in counts.items()]
    manifest = ("\n".join(lines) + "\n").encode("utf-8")
    return {"items.jsonl": data, "manifest.toml": manifest}, counts


def self_check(items, files, counts):
    ids = [it["id"] for it in items]
    assert len(set(ids)) == len(ids)
    assert len(items) >= 440, len(items)
    seen_values = set()
    per = {d: {s: 0 for s in SPLITS} for d in DETECTORS}
    for it in items:
        assert set(it) == {"id", "split", "kind", "text", "spans", "note"}, it["id"]
        assert it["split"] in SPLITS and it["kind"] in ("positive", "negative")
        raw = it["text"].encode("utf-8")
        if it["kind"] == "negative":
            assert not it["spans"], it["id"]
            kind = it["note"].split(":")[1]
            findings = [f for f in scan(it["text"])
                        if not (f[0] == "high_entropy" and kind in HIGH_ENTROPY_TRAPS)]
            assert not findings, (it["id"], findings)
            for m in DIGIT_RUN_RE.finditer(it["text"]):
                digits = re.sub(r"\D", "", m.group())
                if len(digits) == 16:
                    assert not luhn_ok(digits), (it["id"], m.group())
            continue
        assert 1 <= len(it["spans"]) <= 3, it["id"]
        char_spans = []
        for sp in it["spans"]:
            assert sp["detector"] in DETECTORS
            assert raw[sp["start"]:sp["end"]].decode("utf-8") == sp["value"], (it["id"], sp)
            assert VALUE_RULES[sp["detector"]](sp["value"]), (it["id"], sp)
            assert sp["value"] not in seen_values, (it["id"], "duplicate value")
            seen_values.add(sp["value"])
            cs = len(raw[:sp["start"]].decode("utf-8"))
            char_spans.append({**sp, "_cs": cs, "_ce": cs + len(sp["value"])})
            per[sp["detector"]][it["split"]] += 1
        err = check_positive(it["text"], char_spans)
        assert err is None, (it["id"], err)
    for d in DETECTORS:
        assert sum(per[d].values()) >= MIN_PLANTED_TOTAL, d
        assert all(per[d][s] >= MIN_PLANTED_SPLIT for s in SPLITS), d
        assert counts[f"positive.{d}"] == sum(per[d].values())
    n_pos = counts["positive"]
    n_neg = counts["negative"]
    assert abs(n_pos - n_neg) <= 0.1 * len(items), (n_pos, n_neg)
    for kind in ("positive", "negative"):
        by = [sum(it["split"] == s and it["kind"] == kind for it in items) for s in SPLITS]
        assert abs(by[0] - by[1]) <= 2, (kind, by)
    non_ascii = sum(1 for it in items if it["spans"]
                    and any(ord(c) > 127 for c in it["text"].encode()[:it["spans"][0]["start"]].decode()))
    assert non_ascii >= 40, non_ascii
    manifest = files["manifest.toml"].decode("utf-8")
    assert f'"items.jsonl" = "{hashlib.sha256(files["items.jsonl"]).hexdigest()}"' in manifest
    assert f"items = {len(items)}\n" in manifest

    print(f"{'detector':<15}{'dev':>6}{'test':>6}{'total':>7}")
    for d in DETECTORS:
        print(f"{d:<15}{per[d]['dev']:>6}{per[d]['test']:>6}{sum(per[d].values()):>7}")
    print(f"items={len(items)} positive={n_pos} negative={n_neg} "
          f"dev={counts['split.dev']} test={counts['split.test']} "
          f"positives_with_non_ascii_before_first_span={non_ascii}")
    print("negative trap kinds: " + ", ".join(f"{k}={counts[f'negative.{k}']}" for k in NEG_KINDS))


def main(argv):
    """Default: regenerate v1/ and self-check.  --check: only verify that the files on
    disk are byte-identical to what this script generates (writes nothing)."""
    items = build()
    files, counts = render(items)
    self_check(items, files, counts)
    if "--check" in argv:
        stale = [name for name, data in files.items()
                 if not (OUT / name).exists() or (OUT / name).read_bytes() != data]
        if stale:
            print(f"STALE: {', '.join(stale)} differ from the generator output", file=sys.stderr)
            return 1
        print(f"OK: {OUT.relative_to(HERE.parent.parent)} matches the generator output")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
