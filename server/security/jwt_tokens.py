"""Bearer JWTs: signature, issuer, audience and expiry checked with pyjwt, claims mapped to scopes.

HS256 tokens are checked against the shared secret only, RS256/ES256 (and their
larger siblings) against the keys of a local JWKS file only, so a public key can
never be used as an HMAC secret. Verified tokens are remembered briefly (bounded),
because an RSA or ECDSA check costs far more than the rest of the request path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt

from llmproxy.server.config.security import JwtConfig
from llmproxy.server.interceptors.identity import Principal
from llmproxy.server.security.api_keys import unauthenticated

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"})
CACHE_SIZE = 4096
CACHE_TTL_S = 300.0


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def scopes_from_claim(value: Any) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """`"model:fast rpc:Query"` (or a list of such entries) -> (models, rpcs); None = all."""
    entries = value.split() if isinstance(value, str) else list(value or ())
    models = {e[6:] for e in entries if isinstance(e, str) and e.startswith("model:")}
    rpcs = {e[4:] for e in entries if isinstance(e, str) and e.startswith("rpc:")}
    return frozenset(models) or None, frozenset(rpcs) or None


class JwtVerifier:
    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self._secret = config.hs256_secret.get_secret_value() if config.hs256_secret else None
        self._keys: dict[str | None, jwt.PyJWK] = {}
        if config.jwks_file:
            # Read once at start-up (not on the event loop's request path).
            jwks = jwt.PyJWKSet.from_json(Path(config.jwks_file).read_text())
            for key in jwks.keys:
                self._keys[key.key_id] = key
        self._cache: dict[str, tuple[Principal, float]] = {}
        required = ["exp", config.key_id_claim]
        required += ["iss"] if config.issuer else []
        required += ["aud"] if config.audience else []
        self._options: Any = {"require": required}

    def verify(self, token: str, now: float) -> Principal:
        cached = self._cache.get(token)
        if cached is not None and now < cached[1]:
            return cached[0]
        claims = self._decode(token)
        principal = self._principal(claims)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = (principal, min(float(claims["exp"]), now + CACHE_TTL_S))
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            key = self._key_for(algorithm, header.get("kid"))
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("token has expired", "expired_token") from None
        except jwt.InvalidAudienceError:
            raise unauthenticated("token audience is not accepted", "wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise unauthenticated("token issuer is not accepted", "wrong_issuer") from None
        except jwt.PyJWTError as error:
            # pyjwt's messages name claims and algorithms, never the token itself.
            raise unauthenticated(f"invalid token: {error}", "invalid_token") from None

    def _key_for(self, algorithm: Any, kid: Any) -> Any:
        if algorithm == "HS256" and self._secret is not None:
            return self._secret
        if algorithm in ASYMMETRIC and self._keys:
            key = self._keys.get(kid)
            if key is None and kid is None and len(self._keys) == 1:
                key = next(iter(self._keys.values()))
            if key is None:
                raise jwt.InvalidKeyError("no key in the JWKS file matches the token's kid")
            return key
        raise jwt.InvalidAlgorithmError(f"algorithm {algorithm!r} is not accepted")

    def _principal(self, claims: dict[str, Any]) -> Principal:
        key_id = claims[self.config.key_id_claim]
        if not isinstance(key_id, str) or not key_id:
            raise unauthenticated(
                f"token claim {self.config.key_id_claim!r} must be a string", "invalid_token"
            )
        scope = claims.get(self.config.scope_claim)
        if scope is not None and not isinstance(scope, str | list):
            raise unauthenticated(
                f"token claim {self.config.scope_claim!r} must be a string or a list",
                "invalid_token",
            )
        models, rpcs = scopes_from_claim(scope)
        entries = scope.split() if isinstance(scope, str) else list(scope or ())
        return Principal(key_id, models, rpcs, method="jwt", sees_all_usage="usage:all" in entries)
