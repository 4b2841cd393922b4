"""Who may change something through the UI: nobody unless ``LLMOPS_API_KEY`` is set, and then
whoever gives that key, as the services check it (``llmops.serving.BearerAuth``, the same
``hmac.compare_digest``).

A script sends ``Authorization: Bearer <key>``; a browser logs in once (``/login``) and gets a
cookie that holds an HMAC of the key, never the key itself (``HttpOnly``, ``SameSite=Strict``:
another site cannot make the browser post with it). A write whose ``Origin`` is another site is
refused as well. Reading needs no key: the pages show what ``llmops models list`` shows.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr
from starlette.requests import Request

COOKIE = "llmops_ui"


class Auth:
    def __init__(self, api_key: SecretStr | None) -> None:
        self._key = api_key.get_secret_value().encode() if api_key is not None else None

    @property
    def enabled(self) -> bool:
        """Writes are possible at all (a key is set); without one the UI is read-only."""
        return self._key is not None

    @property
    def key(self) -> str | None:
        return self._key.decode() if self._key is not None else None

    def session_token(self) -> str:
        assert self._key is not None  # only called once a key was checked
        return hmac.new(self._key, b"llmops-ui-session", hashlib.sha256).hexdigest()

    def check_key(self, given: str) -> bool:
        return self._key is not None and hmac.compare_digest(given.strip().encode(), self._key)

    def can_write(self, request: Request) -> bool:
        """The request gives the key: a bearer header, or the login cookie."""
        if self._key is None:
            return False
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.check_key(token):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session_token().encode())

    def refusal(self, request: Request) -> tuple[int, str] | None:
        """Why a write is refused (status, message), or None when it may go ahead."""
        if not self.enabled:
            return (
                403,
                "the UI is read-only: start it with LLMOPS_API_KEY set to promote, roll back or curate",
            )
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
            return 403, f"a write from {origin} is refused: only pages of this UI may write"
        if not self.can_write(request):
            return (
                401,
                "missing or wrong API key: log in with LLMOPS_API_KEY (or send 'Authorization: Bearer')",
            )
        return None
