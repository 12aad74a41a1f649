"""Transport security for the gRPC port: TLS, optional mTLS, certificates reloaded on change.

gRPC asks for the certificate configuration at each new handshake; we answer
from memory and look at the files' modification times at most every
`reload_check_s`, so rotating a certificate (cert-manager, certbot) needs no
restart and costs open connections nothing. A file caught half-written keeps the
old certificate in service until the next check (as does a key that does not match).
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from pathlib import Path

import grpc

from llmproxy.server.config.security import TlsConfig

log = logging.getLogger(__name__)


class CertificateFiles:
    def __init__(self, config: TlsConfig) -> None:
        assert config.cert_file and config.key_file
        self.config = config
        self.paths = [Path(config.cert_file), Path(config.key_file)]
        if config.client_ca_file:
            self.paths.append(Path(config.client_ca_file))
        self._stamp = self._stamps()
        self._next_check = 0.0
        self.current = self._load()
        self.reloads = 0

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self.paths:
            stat = os.stat(path)
            stamps.append((stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key = self.paths[0].read_bytes(), self.paths[1].read_bytes()
        ca = self.paths[2].read_bytes() if len(self.paths) > 2 else None
        if b"BEGIN" not in cert or b"BEGIN" not in key or (ca is not None and b"BEGIN" not in ca):
            raise ValueError("certificate files are not PEM")
        # Catches a key that does not match its certificate (a rotation caught half-way).
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(*self.paths[:2])
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC per handshake: a new configuration if the files changed, else None."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + self.config.reload_check_s
        try:
            stamp = self._stamps()
            if stamp == self._stamp:
                return None
            loaded = self._load()
        except (OSError, ValueError) as error:
            log.warning(
                "TLS files unreadable; keeping the current certificate", extra={"error": str(error)}
            )
            return None
        self._stamp, self.current = stamp, loaded
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={"cert_file": str(self.paths[0])})
        return loaded


def server_credentials(config: TlsConfig) -> grpc.ServerCredentials:
    files = CertificateFiles(config)
    return grpc.dynamic_ssl_server_credentials(
        files.current, files.fetch, require_client_authentication=config.mutual
    )
