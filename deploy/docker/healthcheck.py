"""The image's HEALTHCHECK: the gateway answers GET /healthz on HTTP_PORT (any error: unhealthy).

Processes that serve no HTTP (relay, projector, workers, migrations) disable it in compose; in
Kubernetes probes are declared per Deployment instead (HEALTHCHECK is ignored there).
"""

import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('HTTP_PORT', '8000')}/healthz"
try:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a fixed loopback URL
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthcheck: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
