"""Secret sentinels for tests/unit/test_secrets.py and tests/integration/test_secrets_tracking.py
(the `sentinels` fixture of tests/conftest.py sets them): one distinct value per credential
variable, each long enough to be masked."""

from __future__ import annotations

URL_PASSWORD = "url-password-5c1e"


def secret_sentinels() -> dict[str, str]:
    from genalign.secrets import SECRET_ENV

    return {name: f"sentinel-{name.lower().replace('_', '-')}-7f3a" for name in SECRET_ENV}
