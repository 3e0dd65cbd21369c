"""Fixtures for the PKI tests: pkilint as a function, a throwaway SoftHSM2 token, openssl, a CA.

``pkilint_findings(der, kind)`` runs pkilint's RFC 5280 / RFC 6960 validators exactly as its
``lint_pkix_cert``, ``lint_crl -t CRL|ARL -p PKIX`` and ``lint_ocsp_response`` commands do, and
returns the findings of severity WARNING or worse as strings (an empty list is a pass).

The SoftHSM2 token lives in a temporary directory for the whole session: python-pkcs11 loads a
module once per process and SoftHSM reads ``SOFTHSM2_CONF`` only then. Without softhsm2 the
PKCS#11 tests are skipped, except under CI, where that is a failure.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from pkilint import loader, pkix  # type: ignore[import-untyped]
from pkilint.pkix import certificate, crl, extension, name, ocsp  # type: ignore[import-untyped]
from pkilint.validation import (  # type: ignore[import-untyped]
    ValidationFindingDescription,
    ValidationFindingSeverity,
)

from fleetguard.pki.ca import CertificateAuthority, create_issuing, create_root
from fleetguard.pki.keys import Curve, Passphrase, SoftwareKey, generate_software_key
from fleetguard.pki.keys_pkcs11 import SOFTHSM2_MODULE, Pkcs11Token
from fleetguard.pki.profile import DeviceProfile, PublicationUrls

LintKind = Literal["cert", "crl", "arl", "ocsp"]

NOW = dt.datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=dt.UTC)
"""A fixed, fractional 'now'; openssl checks run with ``-attime`` at this instant."""

TRUST_DOMAIN = "fleet.example.org"
URLS = PublicationUrls(
    crl="http://pki.fleet.example.org/crl/issuing.crl",
    ocsp="http://pki.fleet.example.org/ocsp",
    ca_issuers="http://pki.fleet.example.org/ca/issuing.der",
)
TOKEN_LABEL = "fg-test"
PIN_TEST_TOKEN_LABEL = "fg-pin"  # never opened successfully, so wrong-PIN tests see a fresh login
USER_PIN = "1234"
SO_PIN = "5678"


def ca_name(common_name: str) -> x509.Name:
    """Return O=fleetguard test, CN=``common_name``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetguard test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


# --- pkilint -------------------------------------------------------------------------------------


def _certificate_validator() -> object:
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def _crl_validator() -> object:
    return crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container([]),
            crl.create_extensions_validator_container([]),
        ],
    )


def _ocsp_validator() -> object:
    return ocsp.create_pkix_ocsp_response_validator_container(
        [
            ocsp.create_response_decoder(),
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [],
    )


# pkilint 0.13 checks URIs with validators.url (pinned at 0.22), which accepts only ftp, ftps, git,
# http, https, rtsp, sftp, ssh and telnet URLs. Every spiffe:// URI SAN is therefore "invalid URI
# syntax" (ERROR) to it, although RFC 5280 4.2.1.6 allows any RFC 3986 URI and SPIFFE X509-SVID 2
# requires this one. Only that finding, on a well-formed SPIFFE ID, is discounted; a test in
# test_pki_profile.py checks that it is the only finding pkilint makes on a device certificate.
SPIFFE_FALSE_POSITIVE = re.compile(r'Invalid URI syntax: "spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+"')


def _discounted(description: ValidationFindingDescription) -> bool:
    return (
        description.finding.code == "pkix.invalid_uri_syntax"
        and SPIFFE_FALSE_POSITIVE.fullmatch(description.message or "") is not None
    )


def lint(der: bytes, kind: LintKind, *, strict: bool = False) -> list[str]:
    """Return pkilint's findings of severity WARNING or worse for ``der``, as 'path: finding' strings.

    Unless ``strict``, pkilint's false positive on SPIFFE URIs (above) is left out.
    """
    if kind == "cert":
        document = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "certificate")
        validator = _certificate_validator()
    elif kind in {"crl", "arl"}:
        document = loader.RFC5280CertificateListDocumentLoader().load_der_document(der, "crl")
        # lint_crl -t CRL|ARL: the type is a document attribute the CRL validators read.
        document.crl_type = crl.CertificateRevocationListType[kind.upper()]
        validator = _crl_validator()
    else:
        document = loader.RFC6960OCSPResponseDocumentLoader().load_der_document(der, "ocsp")
        validator = _ocsp_validator()
    results = validator.validate(document.root)  # type: ignore[attr-defined]
    return [
        f"{result.node.path}: {description}"
        for result in results
        for description in result.finding_descriptions
        if description.finding.severity <= ValidationFindingSeverity.WARNING
        and (strict or not _discounted(description))
    ]


@pytest.fixture
def pkilint_findings() -> Callable[..., list[str]]:
    """pkilint as a function: ``pkilint_findings(der, "cert" | "crl" | "arl" | "ocsp", strict=False)``."""
    return lint


# --- openssl -------------------------------------------------------------------------------------


def _tool_or_skip(tool: str) -> str:
    path = shutil.which(tool)
    if path is not None:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is not installed under CI: scripts/test must install it")
    pytest.skip(f"{tool} is not installed")


@pytest.fixture
def openssl() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real ``openssl`` with arguments; return the completed process (never raises on rc)."""
    binary = _tool_or_skip("openssl")

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, *map(str, args)], capture_output=True, text=True, check=False, timeout=60
        )

    return run


# --- SoftHSM2 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftHsm:
    """A throwaway SoftHSM2 installation with two initialised tokens."""

    module: Path
    token_dir: Path
    pin: Passphrase


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """Initialise tokens ``fg-test`` and ``fg-pin`` (user PIN 1234) in a temporary token directory."""
    util = _tool_or_skip("softhsm2-util")
    if not SOFTHSM2_MODULE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SOFTHSM2_MODULE} is missing under CI")
        pytest.skip(f"{SOFTHSM2_MODULE} is missing: apt-get install softhsm2")
    root = tmp_path_factory.mktemp("softhsm")
    token_dir = root / "tokens"
    token_dir.mkdir()
    config = root / "softhsm2.conf"
    config.write_text(f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(config))
        for label in (TOKEN_LABEL, PIN_TEST_TOKEN_LABEL):
            subprocess.run(
                [util, "--init-token", "--free", "--label", label, "--pin", USER_PIN, "--so-pin", SO_PIN],
                check=True,
                capture_output=True,
                timeout=60,
            )
        yield SoftHsm(SOFTHSM2_MODULE, token_dir, Passphrase(USER_PIN.encode(), source="test PIN"))


@pytest.fixture(scope="session")
def hsm_token(softhsm: SoftHsm) -> Iterator[Pkcs11Token]:
    """The ``fg-test`` token, open and logged in for the whole session (login state is per process)."""
    with Pkcs11Token.open(softhsm.module, TOKEN_LABEL, softhsm.pin) as token:
        yield token


# --- a CA in memory ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def root_key() -> SoftwareKey:
    return generate_software_key(Curve.P384)


@pytest.fixture(scope="session")
def root_cert(root_key: SoftwareKey) -> x509.Certificate:
    return create_root(root_key, ca_name("fleetguard test root CA"), NOW)


@pytest.fixture(scope="session")
def ca(root_key: SoftwareKey, root_cert: x509.Certificate) -> CertificateAuthority:
    """A root (P-384) and an issuing CA (P-256), both with keys in memory."""
    issuing_key = generate_software_key(Curve.P256)
    issuing = create_issuing(
        root_key, root_cert, issuing_key.public_key(), NOW, name=ca_name("fleetguard test issuing CA 1")
    )
    return CertificateAuthority(root=root_cert, issuing=issuing, key=issuing_key)


@pytest.fixture(scope="session")
def now() -> dt.datetime:
    """A fixed instant with microseconds; openssl checks run with ``-attime`` at it."""
    return NOW


@pytest.fixture
def make_ca_name() -> Callable[[str], x509.Name]:
    """``make_ca_name(cn)`` returns O=fleetguard test, CN=cn."""
    return ca_name


@pytest.fixture
def publication_urls() -> PublicationUrls:
    return URLS


@pytest.fixture
def device_profile() -> DeviceProfile:
    """Trust domain fleet.example.org, default 30-day validity, no organization."""
    return DeviceProfile(trust_domain=TRUST_DOMAIN, urls=URLS)
