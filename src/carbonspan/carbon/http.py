"""The one HTTP call carbonspan makes: a JSON GET, off the request path."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from typing import Any


def get_json(url: str, headers: Mapping[str, str], timeout: float) -> Any:
    """GET `url` and parse its JSON body; raises on any failure (an HTTP
    error status raises `urllib.error.HTTPError`)."""
    request = urllib.request.Request(
        url, headers={"accept": "application/json", **headers}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read().decode("utf-8"))
