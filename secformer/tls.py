"""Mutual TLS between P0, P1 and the dealer, with each side checking its peer's role.

A cluster has its own small CA (``secformer keygen``). Every role gets a key and a
certificate whose common name is the role ("party0", "party1", "dealer"). A link is accepted
only if the peer's certificate chains to the cluster CA *and* names the role this end expects
(the host name is not checked: the role is the identity, so the same certificates work behind
NAT or on changing addresses). TLS 1.3 only.

Paths in ``cluster.toml``, relative to the file; ``{role}`` is replaced by the role::

    [tls]
    ca = "certs/ca.pem"
    cert = "certs/{role}.pem"
    key = "certs/{role}.key"

Each host needs only ``ca.pem`` and its own role's pair; ``ca.key`` stays with whoever
issues the certificates.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secformer.errors import ConfigError

ROLE_NAMES = {0: "party0", 1: "party1", 2: "dealer"}


@dataclass(frozen=True)
class TLSConfig:
    """Where this cluster's CA and the per-role keys and certificates are."""

    ca: Path
    cert: str  # may contain {role}
    key: str

    def cert_for(self, pid: int) -> Path:
        return Path(self.cert.format(role=ROLE_NAMES[pid]))

    def key_for(self, pid: int) -> Path:
        return Path(self.key.format(role=ROLE_NAMES[pid]))

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Path, origin: str) -> TLSConfig:
        def path(k: str) -> str:
            v = d.get(k)
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{origin}: [tls] {k} must be a path")
            return v if os.path.isabs(v) else str(base / v)

        return cls(Path(path("ca")), path("cert"), path("key"))

    def to_toml(self) -> str:
        return f'[tls]\nca = "{self.ca}"\ncert = "{self.cert}"\nkey = "{self.key}"\n'


def _context(tls: TLSConfig, me: int, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # identity = the role in the certificate, checked by peer_role()
    ctx.verify_mode = ssl.CERT_REQUIRED  # both directions: mutual authentication
    for what, p in (("CA certificate", tls.ca), ("certificate", tls.cert_for(me)), ("key", tls.key_for(me))):
        if not p.is_file():
            raise ConfigError(f"TLS {what} {p} does not exist (run `secformer keygen`)")
    try:
        ctx.load_verify_locations(cafile=str(tls.ca))
        ctx.load_cert_chain(str(tls.cert_for(me)), str(tls.key_for(me)))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load TLS files for {ROLE_NAMES[me]}: {exc}") from None
    return ctx


def server_context(tls: TLSConfig, me: int) -> ssl.SSLContext:
    """Context of the listening side (P1 for P0, the dealer for both)."""
    return _context(tls, me, server=True)


def client_context(tls: TLSConfig, me: int) -> ssl.SSLContext:
    """Context of the connecting side."""
    return _context(tls, me, server=False)


def peer_role(ssl_object: Any) -> str | None:
    """The common name of the verified peer certificate (None without TLS or certificate)."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    for rdn in (cert or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return None


def peer_name(ssl_object: Any) -> str | None:
    """A client's own name (the organizational unit of its certificate, ``keygen --client``)."""
    if ssl_object is None:
        return None
    for rdn in (ssl_object.getpeercert() or {}).get("subject", ()):
        for k, v in rdn:
            if k == "organizationalUnitName":
                return str(v)
    return None


def describe(ssl_object: Any) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384' (for the log)."""
    if ssl_object is None:
        return "plaintext TCP"
    c = ssl_object.cipher()
    return f"{ssl_object.version()} {c[0] if c else '?'}"


# ---------------------------------------------------------------------- keygen


def keygen(out: str | Path, days: int = 365, roles: tuple[int, ...] = (0, 1, 2)) -> dict[str, Path]:
    """Write a new cluster CA and a key/certificate per role into ``out`` (keys mode 0600).

    ECDSA P-256 keys; the CA certificate may only sign end-entity certificates (path length 0);
    role certificates are for TLS client and server authentication.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        data = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secformer cluster CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": out / "ca.pem", "ca_key": out / "ca.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    write_key(paths["ca_key"], ca_key)
    for pid in roles:
        role = ROLE_NAMES[pid]
        _issue(out, role, role, None, ca_key, ca_name, valid, write_key, paths)
    return paths


def _issue(out, file, role, client, ca_key, ca_name, valid, write_key, paths) -> None:  # type: ignore[no-untyped-def]
    """Write ``<file>.pem`` and ``<file>.key``: a certificate for ``role`` (common name), with the
    client's own name as organizational unit when given."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, role)]
    if client:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, client))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(role)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths[file] = out / f"{file}.pem"
    paths[file].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[f"{file}_key"] = out / f"{file}.key"
    write_key(paths[f"{file}_key"], key)


def issue_client(out: str | Path, name: str, days: int = 365) -> dict[str, Path]:
    """A certificate of its own for client ``name`` (role party1), signed by the CA in ``out``
    (``ca.pem`` and ``ca.key`` from :func:`keygen`): ``<out>/client-<name>.pem`` and ``.key``.
    A model server (``secformer serve``) names the client by it in its logs and status."""
    import re

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
        raise ConfigError(f"client name {name!r}: use letters, digits, '.', '_' or '-' (at most 63)")
    out = Path(out)
    try:
        ca_cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the cluster CA in {out} (ca.pem, ca.key): {exc}") from None
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))

    def write_key(path: Path, key) -> None:  # type: ignore[no-untyped-def]
        data = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    paths: dict[str, Path] = {}
    _issue(out, f"client-{name}", ROLE_NAMES[1], name, ca_key, ca_cert.subject, valid, write_key, paths)
    return paths


def tls_config_for(out: str | Path) -> TLSConfig:
    """The [tls] settings for certificates written by :func:`keygen` into ``out``."""
    out = Path(out).resolve()
    return TLSConfig(out / "ca.pem", str(out / "{role}.pem"), str(out / "{role}.key"))
