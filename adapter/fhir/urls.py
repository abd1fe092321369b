"""FHIR server URLs: a base parsed once, and the trust check every link and redirect passes.

A URL belongs to a server when its scheme, host and port are the base's (default ports filled
in) and its path is the base path or below it: a parsed comparison, never a substring test
(house rule 6). Credentials go only to the base's origin and the origins a site lists as trusted,
and never over plain http except to this machine (`require_tls`, issue 11).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

import httpx

from adapter.errors import ConfigError, redact_url

_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    origin: Origin
    segments: tuple[str, ...]


def parse_url(url: str | httpx.URL) -> ParsedUrl | None:
    """Scheme, host and explicit port, and the decoded path segments; None if not a usable URL."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL:
        return None
    # Credentials in a link are never legitimate here and are a classic way to disguise a host.
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.host or parsed.userinfo:
        return None
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS[parsed.scheme]
    raw_path = parsed.raw_path.split(b"?", 1)[0].decode("ascii")
    return ParsedUrl((parsed.scheme, parsed.host.lower(), port), _segments(raw_path))


def _segments(raw_path: str) -> tuple[str, ...]:
    """Path segments, each percent-decoded, with dot segments resolved (RFC 3986 5.2.4).

    Decoding before resolving makes `/fhir/%2e%2e/admin` count as `/admin`, which is how many
    servers will read it.
    """
    out: list[str] = []
    for segment in raw_path.split("/")[1:]:
        text = unquote(segment)
        if text == "..":
            if out:
                out.pop()
        elif text != ".":
            out.append(text)
    if out and out[-1] == "":
        out.pop()
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ServerBase:
    """A FHIR server's base URL, parsed once; `url` always ends with a slash."""

    url: str
    origin: Origin
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, url: str) -> ServerBase:
        """Parse and normalise a base URL; a ConfigError if it cannot be one."""
        try:
            plain: httpx.URL | None = httpx.URL(url)
        except httpx.InvalidURL:
            plain = None
        parsed = parse_url(plain) if plain is not None else None
        if plain is None or parsed is None or plain.query or plain.fragment:
            raise ConfigError(
                f"FHIR base URL must be http(s)://host[:port]/path without credentials, "
                f"query or fragment: {redact_url(url)}"
            )
        text = str(plain)
        return cls(text if text.endswith("/") else text + "/", parsed.origin, parsed.segments)

    def contains(self, url: str | httpx.URL) -> bool:
        """Whether `url` has this origin and its path is this base path or below it."""
        parsed = parse_url(url)
        return parsed is not None and self._contains(parsed)

    def relative(self, url: str) -> str | None:
        """The path of `url` below this base (`Patient/1`), or None when it is not below it."""
        parsed = parse_url(url)
        if parsed is None or not self._contains(parsed):
            return None
        return "/".join(parsed.segments[len(self.segments) :])

    def _contains(self, parsed: ParsedUrl) -> bool:
        # Segment-wise, so /fhir2 and /fhir-other are not under /fhir.
        depth = len(self.segments)
        return parsed.origin == self.origin and parsed.segments[:depth] == self.segments


def origin_of(url: str) -> Origin:
    """(scheme, host, port) of a trusted origin as a site writes it; a ConfigError if it has a
    path."""
    parsed = parse_url(url)
    if parsed is None or parsed.segments:
        raise ConfigError(f"a trusted origin must be http(s)://host[:port]: {redact_url(url)}")
    return parsed.origin


def is_trusted(
    url: str | httpx.URL,
    base: ServerBase | str,
    extra_trusted_origins: Iterable[str] = (),
) -> bool:
    """Whether `url` is under `base` or on one of `extra_trusted_origins` (any path there).

    A parsed comparison: scheme, host (case-insensitive), port (default ports made explicit) and
    then the base path segment by segment. Never a substring test.
    """
    server = base if isinstance(base, ServerBase) else ServerBase.parse(base)
    origins = frozenset(origin_of(o) for o in extra_trusted_origins)
    return within(url, server, origins)


def within(url: str | httpx.URL, base: ServerBase, origins: frozenset[Origin]) -> bool:
    """`is_trusted` with the base and origins already parsed (every request checks it)."""
    parsed = parse_url(url)
    if parsed is None:
        return False
    return base._contains(parsed) or parsed.origin in origins


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine: `localhost`, 127.0.0.0/8 or ::1 (no name lookup)."""
    name = host.lower().rstrip(".").removeprefix("[").removesuffix("]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def require_tls(url: str | httpx.URL, what: str) -> None:
    """A ConfigError when credentials would go to `url` in clear text: plain http to another
    machine. Anyone on the path (or a proxy) would read the token or password."""
    parsed = parse_url(url)
    if parsed is None:
        return  # not a usable URL: the caller's own check says so
    scheme, host, _ = parsed.origin
    if scheme == "http" and not is_loopback(host):
        raise ConfigError(
            f"{what} {redact_url(str(url))} is plain http, and credentials are configured: use "
            "https (plain http only to this machine: localhost, 127.0.0.0/8, ::1)"
        )
