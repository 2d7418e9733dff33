"""A small client of Label Studio's REST API (1.23): the five calls the review loop makes.

Plain urllib rather than label-studio-sdk: the SDK (2.x) is a generated client that pulls in httpx,
pydantic and a dozen more packages for what is here five JSON requests, and its method names have moved
between releases; these endpoints are the ones Label Studio's own frontend uses (read from its source:
projects/api.py, data_import/api.py, data_export/api.py, jwt_auth/):

- ``GET/POST /api/projects/`` (``?title=`` filters by substring; paginated ``{"results": [...]}``)
- ``POST /api/projects/{id}/import`` (a JSON list of tasks with ``predictions``; synchronous in the
  community edition)
- ``GET /api/projects/{id}/export?exportType=JSON&download_all_tasks=true`` (every task with its
  ``data``, ``annotations`` and ``predictions``)
- ``GET /api/users/`` (to name annotators the export gives by id)

Authentication: the token in ``$LABEL_STUDIO_API_KEY``. A legacy API token (what ``label-studio start
--user-token T --enable-legacy-api-token`` sets) is sent as ``Authorization: Token T``; a personal access
token (a JWT refresh token, the default kind since 1.18) is exchanged at ``/api/token/refresh/`` for an
access token sent as ``Bearer``. A server that does not answer within ``wait`` seconds is one error line.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

from labeltune.review_tasks import config_controls

TOKEN_ENV = "LABEL_STUDIO_API_KEY"


def token_from_env() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ValueError(
            f"set ${TOKEN_ENV} to your Label Studio token (Account & Settings -> Personal Access Token, or "
            "the --user-token label-studio start was given)"
        )
    return token


class LabelStudio:
    def __init__(self, url: str, token: str, wait: float = 10.0):
        self.url, self.token, self.wait = url.rstrip("/"), token, wait
        self._auth: str | None = None

    def _open(self, method: str, path: str, body=None, auth: bool = True):
        """One request, retried on connection errors until `wait` seconds have passed; JSON in and out."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = self.authorization()
        deadline = time.monotonic() + self.wait
        while True:
            request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=max(1.0, deadline - time.monotonic())) as r:
                    text = r.read().decode("utf-8")
                    return json.loads(text) if text.strip() else None
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300].replace("\n", " ")
                hint = " (check $LABEL_STUDIO_API_KEY)" if e.code in (401, 403) else ""
                raise ValueError(
                    f"Label Studio at {self.url}: {method} {path} -> {e.code} {detail}{hint}"
                ) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if time.monotonic() >= deadline:
                    reason = getattr(e, "reason", e)
                    raise ValueError(
                        f"Label Studio is not reachable at {self.url} ({reason}) after {self.wait:g} s; "
                        "is it running (label-studio start)? --wait sets how long to wait"
                    ) from None
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def authorization(self) -> str:
        if self._auth is None:
            if self.token.count(".") == 2:  # a JWT: a personal access (refresh) token
                access = self._open("POST", "/api/token/refresh/", {"refresh": self.token}, auth=False)
                self._auth = f"Bearer {access['access']}"
            else:
                self._auth = f"Token {self.token}"
        return self._auth

    def project(self, name: str, config: str | None) -> dict:
        """The project named by id or title; a title not found is created with `config`. A project whose
        labelling config lacks the task's controls or choices is refused."""
        if name.isdigit():
            project = self._open("GET", f"/api/projects/{name}/")
        else:
            found = self._open("GET", "/api/projects/?page_size=100&title=" + urllib.parse.quote(name))
            listed = found.get("results", []) if isinstance(found, dict) else found  # paginated or not
            exact = [p for p in listed if p["title"] == name]
            if not exact and config is None:
                raise ValueError(f"Label Studio at {self.url} has no project titled {name!r}")
            if not exact:
                return self._open("POST", "/api/projects/", {"title": name, "label_config": config})
            project = exact[0]
        if config is not None:
            want, have = config_controls(config), config_controls(project.get("label_config") or "<View/>")
            if any(have.get(k) != v for k, v in want.items()):
                raise ValueError(
                    f"project {project['title']!r} (id {project['id']}) has a labelling config that does not "
                    f"match the task (controls {sorted(have)} vs {sorted(want)}, choices "
                    f"{sorted(have.get('label', []))} vs {sorted(want.get('label', []))}); "
                    "use another --project"
                )
        return project

    def import_tasks(self, project_id: int, tasks: list[dict]) -> dict:
        return self._open("POST", f"/api/projects/{project_id}/import", tasks)

    def export(self, project_id: int) -> list[dict]:
        """Every task of the project, annotated or not, in the JSON export format."""
        return self._open("GET", f"/api/projects/{project_id}/export?exportType=JSON&download_all_tasks=true")

    def tasks(self, project_id: int) -> list[dict]:
        return self.export(project_id)

    def users(self) -> dict:
        """user id -> e-mail."""
        found = self._open("GET", "/api/users/")
        return {u["id"]: u.get("email") or u.get("username") for u in found if isinstance(u, dict)}
