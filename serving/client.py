"""The one HTTP client of ``led serve``'s JSON API (serving/app.py), used by the rollback watch and ``led simulate``.

requests with urllib3's ``Retry``: a connection that a dying worker dropped (gunicorn replaces the
worker, serving/server.py) is retried once on a fresh connection, as a production client would.
Answers with an HTTP error status are returned, never retried: their rate is what the callers
measure. ``POST /recommend`` is read-only, so retrying it is safe. Transport errors raise
``requests.RequestException``, an ``OSError``; an unparsable body raises a ``ValueError``.
"""
from __future__ import annotations

from typing import Sequence

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

RECOMMEND = "/recommend"
TIMEOUT_S = 5.0
UNREACHABLE = 0  # the status ``recommend`` reports when no answer came back


class ServingClient:
    def __init__(self, base_url: str, timeout: float = TIMEOUT_S, retries: int = 1):
        self.base_url, self.timeout = base_url.rstrip("/"), timeout
        retry = Retry(total=retries, connect=retries, read=retries, status=0, other=0, backoff_factor=0,
                      allowed_methods=frozenset({"GET", "HEAD", "POST"}), raise_on_status=False)
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def get(self, path: str) -> requests.Response:
        """``GET path``; raises on a transport error or an error status."""
        response = self.session.get(self.base_url + path, timeout=self.timeout)
        response.raise_for_status()
        return response

    def get_json(self, path: str) -> dict:
        return self.get(path).json()

    def status(self, path: str) -> tuple[int, dict]:
        """``GET path`` as (status, JSON body or {}); status ``UNREACHABLE`` when nothing answered."""
        return self._answer("GET", path)

    def recommend(self, items: Sequence[str], k: int = 10) -> tuple[int, dict]:
        """One query as (status, JSON body or {}); status ``UNREACHABLE`` when nothing answered."""
        return self._answer("POST", RECOMMEND, json={"items": list(items), "k": k})

    def _answer(self, method: str, path: str, **kwargs) -> tuple[int, dict]:
        try:
            response = self.session.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException:
            return UNREACHABLE, {}
        return response.status_code, _json_or_empty(response)

    def close(self) -> None:
        self.session.close()


def _json_or_empty(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
