"""Account files: empty passwords, default credentials, weak schemes; the crypt implementations."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_trees import tree_of
from fleetguard.firmware.analyzers.crypthash import (
    Scheme,
    crypt_des,
    crypt_md5,
    crypt_sha,
    parse_hash,
    verify_password,
)
from fleetguard.firmware.analyzers.passwords import (
    MAX_HASHES,
    DefaultCredential,
    PasswordAnalyzer,
    load_default_credentials,
)
from fleetguard.firmware.model import Finding, Severity

LONG = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"

# From libxcrypt through perl's crypt() and `openssl passwd -1/-5/-6/-apr1`; the two "Hello world!"
# vectors are from Drepper's specification.
VECTORS = [
    ("", "abmF1QH4PEr.E"),
    ("", "zZO7u0HfQST3A"),
    ("a", "./xT2u5QYaHcU"),
    ("password", "abJnggxhB/yWI"),
    ("password", "./xZjzHv5vzVE"),
    ("password", "zZDDIZ0NOlPzw"),
    (LONG, "abYH7TYgEKz2Q"),
    ("xc3511", "absxcfbgXtb3o"),
    ("", "$1$saltsalt$5Jhcit4zN9UlGiA0txPkO0"),
    ("", "$1$$qRPK7m23GJusamGpoGLby/"),
    ("a", "$1$saltsalt$MzDjbImyzEz2m0NTiPzNW/"),
    ("password", "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"),
    (LONG, "$1$saltsalt$OYd7btzCG51QMfC46Z8Kd."),
    ("xc3511", "$1$saltsalt$DZ6tYhO9P.qjI3/IiXhg11"),
    ("admin", "$apr1$xxxxxxxx$iQqMYM.ruLKWhNRvI/BJI0"),
    ("", "$5$saltsalt$09agN5RZ2meWdEdnEusqsq5G7RwwghB8jCKoWWADxW/"),
    ("password", "$5$saltsalt$gOjOtoMpVhru2uyjeJSEc/JaLQWOXMNmlOnj6T4AtC."),
    (LONG, "$5$saltsalt$6sWogZ/7tgbB4i8GMuUQzGNh5T2iE4EqbjZ34INWdY8"),
    ("a", "$5$rounds=1000$toolongsaltstrin$u1Zpuge7YwkjBJMUuO6u5.VhQ3BNLEQUeDpLaWRqH54"),
    ("Hello world!", "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"),
    ("Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    (
        "Hello world!",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
    ),
    (
        "",
        "$6$rounds=1000$short$Ocl6K/qPAcDqPeFvc9A.3r9CpINjXCDnNaLAGbHGaUfW/VAnUhMnVHLP9fLC0f.gFxi5W6DCYe3HkDMICsYY21",
    ),
    (
        "password",
        "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/",
    ),
    (
        LONG,
        "$6$saltsaltsaltsalt$utfXmvfnBnGtM.Ab76gver4iFHT0sGc5pOBvs4vE2WjoptP2dNWUYSLnSEuvNQ7aahvOzJrgZBizK7UhYSYR50",
    ),
]
SHA512_OF_LONG = VECTORS[-1][1]
MD5_OF_XC3511 = "$1$saltsalt$DZ6tYhO9P.qjI3/IiXhg11"
DES_OF_PASSWORD = "abJnggxhB/yWI"
DES_OF_LONG = "abYH7TYgEKz2Q"


@pytest.mark.parametrize(("password", "hashed"), VECTORS)
def test_crypt_vectors_verify(password: str, hashed: str) -> None:
    parsed = parse_hash(hashed)
    assert parsed.verifiable
    assert verify_password(password.encode(), parsed)
    assert not verify_password(b"x" + password.encode(), parsed)  # (DES reads 8 characters)


def test_crypt_functions_reproduce_the_vectors_exactly() -> None:
    assert crypt_des(b"password", b"ab") == "abJnggxhB/yWI"
    assert crypt_md5(b"password", b"saltsalt") == "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"
    assert crypt_md5(b"admin", b"xxxxxxxx", apache=True) == "$apr1$xxxxxxxx$iQqMYM.ruLKWhNRvI/BJI0"
    assert crypt_sha(b"Hello world!", b"saltstringsaltstring", Scheme.SHA256, 10000) == VECTORS[19][1]
    assert crypt_sha(b"Hello world!", b"saltstring", Scheme.SHA512) == VECTORS[21][1]


@pytest.mark.parametrize(
    ("field", "scheme", "rounds"),
    [
        ("abJnggxhB/yWI", Scheme.DES, 25),
        ("$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/", Scheme.MD5, 1000),
        ("$5$rounds=10$s$" + "a" * 43, Scheme.SHA256, 1000),  # Drepper: below 1000 is raised to 1000
        ("$6$rounds=5000000$s$" + "a" * 86, Scheme.SHA512, 5_000_000),
        ("$2b$10$" + "a" * 53, Scheme.BCRYPT, 1024),
        ("$y$j9T$salt$hash", Scheme.YESCRYPT, 0),
        ("plaintext", Scheme.UNKNOWN, 0),
        ("$1$toolongsalt$qjXMvbEw8oaL.CzflDtaK/", Scheme.UNKNOWN, 0),
    ],
)
def test_parse_hash_classifies_schemes(field: str, scheme: Scheme, rounds: int) -> None:
    parsed = parse_hash(field)
    assert (parsed.scheme, parsed.rounds) == (scheme, rounds)
    assert not verify_password(b"password", parse_hash("$2b$10$" + "a" * 53))


def test_shipped_list_has_mirai_credentials() -> None:
    credentials = {(c.user, c.password) for c in load_default_credentials()}
    assert len(credentials) >= 150
    mirai = {("root", "xc3511"), ("root", "vizxv"), ("admin", "admin"), ("root", ""), ("ubnt", "ubnt")}
    assert mirai <= credentials


PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"# a comment line: nothing\n"
    b"toor::0:0:backdoor:/root:/bin/ash\n"
    b"guest::1000:1000::/home/guest:/bin/sh\n"
    b"ftp:x:21:21::/var/ftp:/bin/false\n"
    b"user:x:1001:1001::/home/user:/bin/sh\n"
    b"svc:x:1002:1002::/:/bin/sh\n"
    b"old:x:1003:1003::/:/bin/sh\n"
    b"locked:x:1004:1004::/:/bin/sh\n"
)
SHADOW = (
    f"root:{MD5_OF_XC3511}:18000:0:99999:7:::\n"
    "daemon:*:18000:0:99999:7:::\n"
    "ftp::18000:0:99999:7:::\n"
    f"user:{DES_OF_PASSWORD}:18000:0:99999:7:::\n"
    f"svc:{SHA512_OF_LONG}:18000:0:99999:7:::\n"
    f"old:{DES_OF_LONG}:18000:0:99999:7:::\n"
    f"locked:!{MD5_OF_XC3511}:18000:0:99999:7:::\n"
    "slow:$6$rounds=200000$salt$" + "a" * 86 + ":18000::::::\n"
    "modern:$2b$10$" + "a" * 53 + ":18000::::::\n"
).encode()
SMALL_LIST = (
    DefaultCredential("root", "xc3511", 1),
    DefaultCredential("admin", "password", 2),
    DefaultCredential("admin", "admin", 3),
)


def _line_offset(content: bytes, prefix: bytes) -> int:
    offset = content.index(prefix)
    assert offset == 0 or content[offset - 1 : offset] == b"\n"
    return offset


def _keyed(findings: list[Finding]) -> set[tuple[str, Severity, str, int | None]]:
    return {(f.rule, f.severity, f.path, f.offset) for f in findings}


def test_planted_accounts_are_found_with_exact_rule_severity_and_offset(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"/etc/passwd": (PASSWD, 0o644), "/etc/shadow": (SHADOW, 0o600)})
    findings = list(PasswordAnalyzer(SMALL_LIST).analyze(tree))
    assert _keyed(findings) == {
        ("passwd.empty-password", Severity.CRITICAL, "/etc/passwd", _line_offset(PASSWD, b"toor:")),
        ("passwd.empty-password", Severity.HIGH, "/etc/passwd", _line_offset(PASSWD, b"guest:")),
        ("passwd.default-credential", Severity.CRITICAL, "/etc/shadow", _line_offset(SHADOW, b"root:")),
        ("passwd.empty-password", Severity.LOW, "/etc/shadow", _line_offset(SHADOW, b"ftp:")),
        ("passwd.default-credential", Severity.HIGH, "/etc/shadow", _line_offset(SHADOW, b"user:")),
        ("passwd.weak-hash", Severity.MEDIUM, "/etc/shadow", _line_offset(SHADOW, b"old:")),
        ("passwd.hash-not-checked", Severity.INFO, "/etc/shadow", _line_offset(SHADOW, b"slow:")),
        ("passwd.hash-not-checked", Severity.INFO, "/etc/shadow", _line_offset(SHADOW, b"modern:")),
    }
    # The sha512 hash that matches nothing, the locked and the '*' accounts are not reported.
    assert not any(f.details and ("user", "svc") in f.details for f in findings)


def test_evidence_never_holds_the_password(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"/etc/shadow": (f"root:{MD5_OF_XC3511}:1::::::\n".encode(), 0o600)})
    (finding,) = PasswordAnalyzer().analyze(tree)
    assert finding.rule == "passwd.default-credential"
    assert "xc3511" not in finding.evidence
    assert "xc3511" not in repr(finding.details)
    assert ("uid", "0") not in finding.details  # no passwd: root is recognised by name


def test_shipped_list_finds_a_mirai_password_and_not_an_unknown_one(tmp_path: Path) -> None:
    shadow = f"admin:{DES_OF_PASSWORD}:1::::::\nsvc:{SHA512_OF_LONG}:1::::::\n".encode()
    tree = tree_of(tmp_path, {"/etc/shadow": (shadow, 0o600)})
    assert _keyed(list(PasswordAnalyzer().analyze(tree))) == {
        ("passwd.default-credential", Severity.HIGH, "/etc/shadow", 0),
    }


def test_backups_and_htpasswd_are_read(tmp_path: Path) -> None:
    line = f"root:{MD5_OF_XC3511}:18000::::::\n".encode()
    tree = tree_of(
        tmp_path,
        {
            "/etc/shadow-": (line, 0o600),
            "/etc_ro/web/.htpasswd": (b"admin:$apr1$xxxxxxxx$iQqMYM.ruLKWhNRvI/BJI0\n", 0o644),
            "/etc/lighttpd.passwd": (b"admin:" + DES_OF_PASSWORD.encode() + b"\n", 0o644),
            "/usr/share/doc/passwd.txt": (line, 0o644),  # not an account file
        },
    )
    found = {(f.path, f.rule) for f in PasswordAnalyzer(SMALL_LIST).analyze(tree)}
    assert found == {
        ("/etc/shadow-", "passwd.default-credential"),
        ("/etc_ro/web/.htpasswd", "passwd.default-credential"),
        ("/etc/lighttpd.passwd", "passwd.default-credential"),
    }


def test_distinct_hashes_beyond_the_limit_are_reported_as_not_checked(tmp_path: Path) -> None:
    salts = [a + b for a in "abcdefgh" for b in "abcdefgh"][: MAX_HASHES + 2]
    shadow = "".join(f"u{i}:{crypt_des(b'nomatch', s.encode())}:1::::::\n" for i, s in enumerate(salts))
    tree = tree_of(tmp_path, {"/etc/shadow": (shadow.encode(), 0o600)})
    rules = [f.rule for f in PasswordAnalyzer(SMALL_LIST).analyze(tree)]
    assert rules.count("passwd.weak-hash") == MAX_HASHES
    assert rules.count("passwd.hash-not-checked") == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shadow=st.binary(max_size=600), passwd=st.binary(max_size=600))
def test_random_account_files_never_raise(tmp_path: Path, shadow: bytes, passwd: bytes) -> None:
    tree = tree_of(tmp_path, {"/etc/shadow": (shadow, 0o600), "/etc/passwd": (passwd, 0o644)})
    for finding in PasswordAnalyzer(SMALL_LIST).analyze(tree):
        assert finding.path in {"/etc/shadow", "/etc/passwd"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(["root", "admin", "x"]), st.text(alphabet="$156abc./:rounds=0123", max_size=40)
        ),
        max_size=6,
    )
)
def test_random_hash_fields_never_raise(tmp_path: Path, lines: list[tuple[str, str]]) -> None:
    shadow = "".join(f"{user}:{field}\n" for user, field in lines).encode()
    tree = tree_of(tmp_path, {"/etc/shadow": (shadow, 0o600)})
    list(PasswordAnalyzer(SMALL_LIST).analyze(tree))
