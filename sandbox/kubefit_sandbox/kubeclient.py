"""Kubernetes API plumbing for the sandbox's node code: clients, raw JSON, and watches.

Raw JSON dicts rather than the client's models: cheaper, and they match the pure code in
kubefit_sandbox.podstatus. The kubernetes package is imported only when a client is made, so that
the CLI can import this module without it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubefit_sandbox.errors import NodeAgentError

WATCH_TIMEOUT_S = 300  # server-side; the read timeout below is a little longer to notice dead links


def new_api_client(kubeconfig: str | Path) -> Any:
    """A client for the API server in `kubeconfig`, read afresh (a `sandbox up` may move the server)."""
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))


def core_api(api_client: Any) -> Any:
    """The CoreV1Api on `api_client`; call it with _preload_content=False to get raw JSON."""
    from kubernetes import client

    return client.CoreV1Api(api_client)


def response_json(response: Any) -> Any:
    """The decoded body of a call made with _preload_content=False."""
    return json.loads(response.data)


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def watch_events(
    list_function: Callable[..., Any], resource_version: str, **selectors: Any
) -> Iterator[dict]:
    """Raw watch events ({type, object}) from resource_version until the server closes the watch.

    Bookmarks are asked for (and yielded) so that the caller's resourceVersion stays fresh.
    """
    response = list_function(
        watch=True,
        resource_version=resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=WATCH_TIMEOUT_S,
        _preload_content=False,
        _request_timeout=(10, WATCH_TIMEOUT_S + 30),
        **selectors,
    )
    from kubernetes.watch.watch import iter_resp_lines

    try:
        for line in iter_resp_lines(response):
            if not line.strip():
                continue
            event = json.loads(line)
            if event.get("type") == "ERROR":
                status = event.get("object") or {}
                if status.get("code") == 410:
                    raise WatchExpired(status.get("message", "resource version too old"))
                raise NodeAgentError(f"watch error: {status.get('message', status)}")
            yield event
    finally:
        response.close()
        response.release_conn()
