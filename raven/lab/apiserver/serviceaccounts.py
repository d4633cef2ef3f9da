"""Acting as a ServiceAccount, from outside the server: a token and a kubeconfig for it.

:func:`request_token` asks the TokenRequest API (what ``kubectl create token SA -n NS`` does)
with a credential allowed to, normally the lab's admin token;
:func:`write_service_account_kubeconfig` puts the token in a kubeconfig (mode 0600) for kubectl,
the ``kubernetes`` client or an agent.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from raven.lab.apiserver.kubeconfig import write_kubeconfig


class TokenRequestError(RuntimeError):
    """The API server did not issue the token; the message holds its answer."""


def request_token(
    server: str,
    ca_cert: Path,
    bearer: str,
    namespace: str,
    name: str,
    *,
    seconds: int = 3600,
    audiences: Sequence[str] = (),
    timeout: float = 10.0,
) -> str:
    """A token for ServiceAccount ``namespace/name``, valid ``seconds`` (at least 600)."""
    spec: dict[str, object] = {"expirationSeconds": seconds}
    if audiences:
        spec["audiences"] = list(audiences)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    url = f"{server}/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except ValueError:
            pass
        raise TokenRequestError(
            f"token for serviceaccount {namespace}/{name}: HTTP {e.code}: {detail}"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        raise TokenRequestError(f"token for serviceaccount {namespace}/{name}: {e}") from e
    token = (answer.get("status") or {}).get("token")
    if not isinstance(token, str) or not token:
        raise TokenRequestError(f"token for serviceaccount {namespace}/{name}: no token in answer")
    return token


def write_service_account_kubeconfig(
    path: Path, server: str, ca_cert: Path, token: str, *, namespace: str, name: str
) -> Path:
    """A kubeconfig (0600) that acts as ServiceAccount ``namespace/name`` with ``token``."""
    return write_kubeconfig(path, server, ca_cert, token, name=f"{namespace}-{name}")
