"""Response bodies read within a size limit, so a hostile or broken server cannot fill memory.

Issue 11: a 2 GiB body read whole took 6 GiB. A response is sent with `stream=True` and its
body read here chunk by chunk, counted once decoded (a gzip bomb is caught too); a
`Content-Length` above the limit is refused before any of it is read.
"""

from __future__ import annotations

import httpx

from adapter.errors import LimitExceededError

MIB = 1024 * 1024
#: the default limit of one response (ServerConfig.max_response_mb)
DEFAULT_MAX_RESPONSE = 256 * MIB
#: a token or SMART discovery answer is a few hundred bytes
SMALL_RESPONSE = 1 * MIB
# The body this module hands back is decoded, so these no longer describe it.
_ENCODING_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def describe(limit: int) -> str:
    """`256 MiB`, `1.5 MiB`, `512 bytes`."""
    return f"{limit / MIB:g} MiB" if limit >= MIB else f"{limit} bytes"


def too_large(limit: int, url: str) -> LimitExceededError:
    return LimitExceededError(f"response larger than the {describe(limit)} limit", url=url)


def declared_length(response: httpx.Response) -> int | None:
    """Content-Length as a number; None when absent or not one."""
    value = response.headers.get("Content-Length", "")
    first = value.split(",", 1)[0].strip()  # repeated identical values (RFC 9110 8.6)
    return int(first) if first.isdigit() else None


async def read_bounded(response: httpx.Response, limit: int | None, url: str) -> httpx.Response:
    """`response`, sent with `stream=True`, with its body read: at most `limit` bytes (None: any).

    The stream is closed in every case; the response returned holds the decoded body as
    `content`. A body past the limit raises LimitExceededError, which is not temporary.
    """
    try:
        if limit is None:
            await response.aread()
            return response
        declared = declared_length(response)
        if declared is not None and declared > limit:
            raise too_large(limit, url)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise too_large(limit, url)
    finally:
        await response.aclose()
    return _with_body(response, bytes(body))


def _with_body(response: httpx.Response, body: bytes) -> httpx.Response:
    headers = [
        (k, v) for k, v in response.headers.multi_items() if k.lower() not in _ENCODING_HEADERS
    ]
    read = httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=response.request,
        extensions=response.extensions,
    )
    read.history = response.history
    return read
