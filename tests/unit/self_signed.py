"""A self-signed certificate for 127.0.0.1 (openssl), for the webhook's TLS in unit and end-to-end tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed_certificate(directory: Path, name: str = "tls") -> tuple[Path, Path]:
    """(certificate, key) PEM files in `directory`, valid one day for IP 127.0.0.1: the certificate is its own
    CA, so it is also the caBundle that trusts it."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
