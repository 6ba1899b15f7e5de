"""A proxy.py plugin for tests/integration/test_proxy.py, loaded by the proxy.py process the
tests start (not imported by pytest): it records what the proxy received and maps test host
names to loopback.

- Every request the proxy handles (a ``CONNECT``, a forwarded plain-http request, and the further
  requests of a kept-alive connection) is appended as one JSON line to ``$PROXY_RECORD_FILE``:
  method, host, port, and the headers as the proxy received them, so a test can check what the
  proxy saw (credentials, no origin ``Authorization`` in a ``CONNECT``).
- Names under ``.test`` resolve to 127.0.0.1 inside the proxy (``resolve_dns``): this sandbox has
  no DNS and only loopback may be reached, and a non-loopback name is what makes the client use an
  environment proxy at all.
- proxy.py 2.4.10 strips ``Proxy-Authorization`` and ``Proxy-Connection`` from the first request of
  a plain-http connection but forwards later requests on the same connection as they came
  (``HttpProxyPlugin.on_client_data``'s pipeline path), credentials included. A proxy must not pass
  its own credentials on (RFC 9110 §11.7.1), and the SDK cannot strip them for the proxy, so this
  plugin does it for those requests as proxy.py does for the first one; the record keeps what came.
"""

from __future__ import annotations

import json
import os
from typing import Any

from proxy.http.proxy import HttpProxyBasePlugin

_HOP_BY_HOP = (b"proxy-authorization", b"proxy-connection")


class Record(HttpProxyBasePlugin):  # type: ignore[misc]
    def resolve_dns(self, host: str, port: int) -> tuple[str | None, Any]:
        if host.endswith(".test"):
            return "127.0.0.1", None
        return None, None

    def handle_client_request(self, request: Any) -> Any:
        path = os.environ.get("PROXY_RECORD_FILE")
        if path:
            headers = {
                key.decode("latin-1"): value[1].decode("latin-1")
                for key, value in (request.headers or {}).items()
            }
            entry = {
                "method": (request.method or b"").decode("latin-1"),
                "host": (request.host or b"").decode("latin-1"),
                "port": request.port,
                "headers": headers,
            }
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")
        if request.method != b"CONNECT":
            request.del_headers(list(_HOP_BY_HOP))
        return request
