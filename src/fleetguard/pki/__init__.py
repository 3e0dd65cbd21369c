"""PKI: CA hierarchy, key backends, certificate profiles, issuance, renewal, revocation, CRL and OCSP."""

__all__: list[str] = []
