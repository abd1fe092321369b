"""Bulk file downloads: where the token goes, redirects, limits, retries, resume, concurrency."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import logging
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec

from adapter.bulk.download import download, download_all, plan_files
from adapter.bulk.jobs import JobFolder
from adapter.bulk.model import DownloadedFile, ExportRequest, JobState, Manifest, OutputFile
from adapter.errors import (
    HttpStatusError,
    InvalidResponseError,
    LimitExceededError,
    TemporaryHttpError,
    UntrustedUrlError,
)
from adapter.fhir.client import FhirClient
from adapter.fhir.credentials import BearerAuth, SmartBackendAuth
from adapter.fhir.limits import Limits, RetryPolicy

BASE = "https://ehr.test/fhir"
TRUSTED = "https://files.trusted"
FOREIGN = "https://storage.example"
SECRET = "SECRET123"
SIGNED = f"{FOREIGN}/bucket/obs.ndjson?X-Amz-Signature={SECRET}"
ON_SERVER = f"{BASE}/bulk/files/1.ndjson"
KEY = "0123456789abcdef0123456789abcdef"
BODY = b'{"resourceType":"Observation","id":"o1"}\n{"resourceType":"Observation","id":"o2"}\n'
NDJSON = "application/fhir+ndjson"


def bearer() -> httpx.Auth:
    return BearerAuth("tok", base=BASE, extra_trusted_origins=[TRUSTED])


def run(
    call: Callable[[FhirClient], Awaitable[Any]],
    *,
    auth: httpx.Auth | None = None,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> Any:
    """Run `call(client)` on a FhirClient for BASE (TRUSTED trusted) over a fresh AsyncClient."""

    async def main() -> Any:
        async with httpx.AsyncClient(auth=auth or bearer()) as http:
            http.headers.update(headers or {})
            return await call(FhirClient(http, BASE, extra_trusted_origins=[TRUSTED], **options))

    return asyncio.run(main())


def fetch(
    dest: Path,
    url: str,
    *,
    requires_token: bool = True,
    max_bytes: int = 1 << 20,
    deadline: float = 600.0,
    clock: Callable[[], float] | None = None,
    **options: Any,
) -> DownloadedFile:
    def call(client: FhirClient) -> Awaitable[DownloadedFile]:
        extra = {} if clock is None else {"clock": clock}
        return download(
            client,
            OutputFile("Observation", url),
            dest / "Observation.000.ndjson",
            requires_token=requires_token,
            max_bytes=max_bytes,
            deadline_seconds=deadline,
            **extra,
        )

    result: DownloadedFile = run(call, **options)
    return result


class Chunks(httpx.AsyncByteStream):
    """A body in chunks: optionally cut (a transport error) before chunk `cut_at`, or slow."""

    def __init__(
        self,
        chunks: Sequence[bytes],
        *,
        cut_at: int | None = None,
        pause: float = 0.0,
        flight: Flight | None = None,
    ) -> None:
        self.chunks = chunks
        self.cut_at = cut_at
        self.pause = pause
        self.flight = flight
        self.read = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        if self.flight is not None:
            self.flight.enter()
        try:
            for index, chunk in enumerate(self.chunks):
                if index == self.cut_at:
                    raise httpx.RemoteProtocolError("peer closed connection")
                await asyncio.sleep(self.pause)
                yield chunk
        finally:
            if self.flight is not None:
                self.flight.leave()


class Flight:
    """How many bodies are streaming at once, and the most at any time."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        self.now -= 1


def ok(body: bytes = BODY, **headers: str) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"Content-Type": NDJSON, **headers})


def assert_nothing_left(folder: Path) -> None:
    assert [p.name for p in folder.iterdir()] == []


# -- one file --------------------------------------------------------------------------------------


@respx.mock
def test_a_file_is_streamed_whole_to_its_name_owner_only(tmp_path: Path) -> None:
    """The record names the file, its size and SHA-256; the file is 0600; no `.part` is left."""
    route = respx.get(ON_SERVER).mock(return_value=ok())
    record = fetch(tmp_path, ON_SERVER)
    assert record == DownloadedFile(
        ON_SERVER,
        "Observation",
        "Observation.000.ndjson",
        len(BODY),
        hashlib.sha256(BODY).hexdigest(),
    )
    written = tmp_path / "Observation.000.ndjson"
    assert written.read_bytes() == BODY
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["Observation.000.ndjson"]
    request = route.calls.last.request
    assert request.headers["Accept"] == NDJSON
    assert request.headers["Authorization"] == "Bearer tok"


@pytest.mark.parametrize("url", [ON_SERVER, f"{TRUSTED}/exports/1.ndjson?sig=abc"])
@respx.mock
def test_the_token_goes_to_the_server_and_to_trusted_origins(tmp_path: Path, url: str) -> None:
    """requiresAccessToken: the server's files and a trusted origin's get the token."""
    route = respx.get(url).mock(return_value=ok())
    fetch(tmp_path, url)
    assert route.calls.last.request.headers["Authorization"] == "Bearer tok"


@respx.mock
def test_a_file_needing_the_token_elsewhere_is_refused_unread(tmp_path: Path) -> None:
    """The token never leaves home, and without it the file cannot be read: no request at all."""
    route = respx.get(SIGNED).mock(return_value=ok())
    with pytest.raises(UntrustedUrlError, match="requiresAccessToken") as caught:
        fetch(tmp_path, SIGNED)
    assert not route.called
    assert "https://storage.example/bucket/obs.ndjson" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("auth", [bearer, lambda: TokenPerRequest()], ids=["bearer", "anywhere"])
@pytest.mark.parametrize("url", [ON_SERVER, SIGNED])
@respx.mock
def test_files_that_need_no_token_get_none_even_from_the_server(
    tmp_path: Path, url: str, auth: Callable[[], httpx.Auth]
) -> None:
    """requiresAccessToken false: no Authorization header anywhere, whatever the auth would do."""
    route = respx.get(url).mock(return_value=ok())
    fetch(tmp_path, url, requires_token=False, auth=auth())
    assert "Authorization" not in route.calls.last.request.headers


@respx.mock
def test_a_foreign_origin_gets_none_of_the_servers_headers(tmp_path: Path) -> None:
    """A server profile's headers and cookies are the server's business, not the storage's."""
    server = respx.get(ON_SERVER).mock(return_value=ok())
    foreign = respx.get(SIGNED).mock(return_value=ok())
    headers = {"Epic-Client-ID": "client-1", "Cookie": "session=abc"}
    fetch(tmp_path, ON_SERVER, requires_token=False, headers=headers)
    fetch(tmp_path, SIGNED, requires_token=False, headers=headers)
    assert server.calls.last.request.headers["Epic-Client-ID"] == "client-1"
    sent = foreign.calls.last.request.headers
    assert "Epic-Client-ID" not in sent
    assert "Cookie" not in sent
    assert sent["Accept"] == NDJSON


@pytest.mark.parametrize(
    ("url", "requires_token"),
    [
        ("http://storage.example/x.ndjson", False),
        ("http://ehr.test/fhir/x.ndjson", False),
        ("ftp://storage.example/x.ndjson", False),
        ("/relative/x.ndjson", False),
        ("https://user:pw@ehr.test/fhir/x.ndjson", True),
    ],
)
@respx.mock
def test_plain_http_off_this_machine_and_odd_urls_are_refused(
    tmp_path: Path, url: str, requires_token: bool
) -> None:
    """https only, plain http only to this machine; nothing is requested."""
    with pytest.raises(UntrustedUrlError):
        fetch(tmp_path, url, requires_token=requires_token)
    assert not respx.calls


@respx.mock
def test_plain_http_to_this_machine_is_fine(tmp_path: Path) -> None:
    """A local test server or proxy on loopback."""
    respx.get("http://127.0.0.1:8765/x.ndjson").mock(return_value=ok())
    assert fetch(tmp_path, "http://127.0.0.1:8765/x.ndjson", requires_token=False).size == len(BODY)


# -- redirects -----------------------------------------------------------------------------------


def redirect(location: str, status: int = 302) -> httpx.Response:
    return httpx.Response(status, headers={"Location": location})


@pytest.mark.parametrize("auth", [bearer, lambda: TokenPerRequest()], ids=["bearer", "anywhere"])
@respx.mock
def test_a_redirect_to_a_foreign_origin_drops_the_token(
    tmp_path: Path, auth: Callable[[], httpx.Auth]
) -> None:
    """The server may hand out a signed storage URL: followed, without the token, even with an
    auth that would add it anywhere."""
    first = respx.get(ON_SERVER).mock(return_value=redirect(SIGNED))
    second = respx.get(SIGNED).mock(return_value=ok())
    assert fetch(tmp_path, ON_SERVER, auth=auth()).size == len(BODY)
    assert first.calls.last.request.headers["Authorization"].startswith("Bearer ")
    assert "Authorization" not in second.calls.last.request.headers


@respx.mock
def test_a_redirect_to_a_trusted_origin_keeps_the_token(tmp_path: Path) -> None:
    """Relative and trusted hops are fine, each checked."""
    respx.get(ON_SERVER).mock(return_value=redirect("/fhir/bulk/files/2.ndjson", 307))
    respx.get(f"{BASE}/bulk/files/2.ndjson").mock(return_value=redirect(f"{TRUSTED}/f/2"))
    last = respx.get(f"{TRUSTED}/f/2").mock(return_value=ok())
    fetch(tmp_path, ON_SERVER)
    assert last.calls.last.request.headers["Authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    ("location", "error", "message"),
    [
        ("http://storage.example/x", UntrustedUrlError, "https to plain http"),
        ("http://127.0.0.1:8765/x", UntrustedUrlError, "https to plain http"),
        ("ftp://storage.example/x", UntrustedUrlError, "not http"),
        ("", InvalidResponseError, "without Location"),
    ],
)
@respx.mock
def test_a_redirect_that_breaks_the_rules_stops(
    tmp_path: Path, location: str, error: type[Exception], message: str
) -> None:
    """No downgrade from https, no other scheme, no redirect without a target."""
    respx.get(ON_SERVER).mock(return_value=redirect(location))
    with pytest.raises(error, match=message):
        fetch(tmp_path, ON_SERVER)
    assert len(respx.calls) == 1
    assert_nothing_left(tmp_path)


@respx.mock
def test_more_than_five_redirects_stop(tmp_path: Path) -> None:
    """Five hops are followed, the sixth is not."""
    for hop in range(7):
        respx.get(f"{BASE}/hop/{hop}").mock(return_value=redirect(f"{BASE}/hop/{hop + 1}"))
    with pytest.raises(InvalidResponseError, match="more than 5 redirects"):
        fetch(tmp_path, f"{BASE}/hop/0")
    assert len(respx.calls) == 6


# -- limits --------------------------------------------------------------------------------------


@respx.mock
def test_a_declared_length_past_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    """Content-Length says too much: the body is never read, nothing is written."""
    body = Chunks([b"x" * 500] * 4)
    respx.get(ON_SERVER).mock(
        return_value=httpx.Response(200, headers={"Content-Length": "2000"}, stream=body)
    )
    with pytest.raises(LimitExceededError, match="1000 bytes limit"):
        fetch(tmp_path, ON_SERVER, max_bytes=1000)
    assert not body.read
    assert_nothing_left(tmp_path)


@respx.mock
def test_a_body_past_the_limit_without_a_length_stops_and_is_deleted(tmp_path: Path) -> None:
    """Counted while streaming; the half-written file goes."""
    respx.get(ON_SERVER).mock(
        side_effect=lambda _: httpx.Response(200, stream=Chunks([b"x" * 400] * 4))
    )
    with pytest.raises(LimitExceededError, match=r"Observation\.000\.ndjson larger than the 1000"):
        fetch(tmp_path, ON_SERVER, max_bytes=1000)
    assert_nothing_left(tmp_path)


@respx.mock
def test_gzip_is_decoded_and_counted_decoded(tmp_path: Path) -> None:
    """The file holds the NDJSON itself; a gzip bomb meets the limit on its decoded size."""
    packed = gzip.compress(BODY)
    respx.get(ON_SERVER).mock(return_value=ok(packed, **{"Content-Encoding": "gzip"}))
    record = fetch(tmp_path, ON_SERVER)
    assert (tmp_path / record.path).read_bytes() == BODY
    assert record.size == len(BODY)
    bomb = gzip.compress(b"\n" * 5_000_000)
    assert len(bomb) < 10_000
    respx.get(ON_SERVER).mock(return_value=ok(bomb, **{"Content-Encoding": "gzip"}))
    (tmp_path / "bomb").mkdir()
    with pytest.raises(LimitExceededError):
        fetch(tmp_path / "bomb", ON_SERVER, max_bytes=100_000)
    assert_nothing_left(tmp_path / "bomb")


def ticking(step: float) -> Callable[[], float]:
    """A clock that moves `step` seconds each time it is read."""
    counter = itertools.count(0.0, step)
    return lambda: next(counter)


@respx.mock
def test_a_file_past_its_deadline_stops_and_is_deleted(tmp_path: Path) -> None:
    """The deadline is for the whole file: a trickle is cut off."""
    respx.get(ON_SERVER).mock(
        side_effect=lambda _: httpx.Response(200, stream=Chunks([b"x\n"] * 10))
    )
    with pytest.raises(LimitExceededError, match="within its 25 s limit"):
        fetch(tmp_path, ON_SERVER, deadline=25, clock=ticking(10))
    assert_nothing_left(tmp_path)


@respx.mock
def test_a_stalled_body_ends_at_the_deadline_in_real_time(tmp_path: Path) -> None:
    """A body that sends nothing is ended by the deadline, not only by checks between chunks."""
    respx.get(ON_SERVER).mock(
        side_effect=lambda _: httpx.Response(200, stream=Chunks([b"x"], pause=5))
    )
    with pytest.raises(LimitExceededError, match=r"within its 0\.2 s limit"):
        fetch(tmp_path, ON_SERVER, deadline=0.2)
    assert_nothing_left(tmp_path)


@respx.mock
def test_retries_stop_at_the_deadline(tmp_path: Path) -> None:
    """No retry is started that would begin past the file's deadline: the last error stands."""
    now = [0.0]

    def slow_503(_: httpx.Request) -> httpx.Response:
        now[0] += 10  # each refusal takes 10 s
        return httpx.Response(503)

    route = respx.get(ON_SERVER).mock(side_effect=slow_503)
    with pytest.raises(TemporaryHttpError):
        fetch(tmp_path, ON_SERVER, deadline=25, clock=lambda: now[0])
    assert route.call_count == 3  # at 10 s and 20 s a retry still fits; at 30 s none does


# -- retries -------------------------------------------------------------------------------------


def cut() -> httpx.Response:
    return httpx.Response(200, stream=Chunks([b'{"resourceType":', b"..."], cut_at=1))


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(lambda: httpx.Response(503, headers={"Retry-After": "3"}), id="503"),
        pytest.param(lambda: httpx.Response(429, headers={"Retry-After": "3"}), id="429"),
        pytest.param(lambda: httpx.Response(500), id="500"),
        pytest.param(lambda: httpx.ConnectError("refused"), id="no answer"),
        pytest.param(cut, id="cut body"),
    ],
)
@respx.mock
def test_a_temporary_failure_restarts_the_file_from_zero(
    tmp_path: Path, failure: Callable[[], Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The file is fetched again whole; the retry is logged by file name."""
    route = respx.get(ON_SERVER).mock(side_effect=[failure(), ok()])
    with caplog.at_level(logging.WARNING, logger="adapter"):
        record = fetch(tmp_path, ON_SERVER)
    assert route.call_count == 2
    assert (tmp_path / record.path).read_bytes() == BODY
    assert record.size == len(BODY)
    assert "Bulk file Observation.000.ndjson:" in caplog.text
    assert "ehr.test" not in caplog.text


@respx.mock
def test_temporary_failures_end_when_the_attempts_are_spent(tmp_path: Path) -> None:
    """The client's RetryPolicy bounds the attempts; the last error is raised."""
    route = respx.get(ON_SERVER).mock(return_value=httpx.Response(502))
    with pytest.raises(TemporaryHttpError, match="HTTP 502"):
        fetch(tmp_path, ON_SERVER, retry=RetryPolicy(attempts=3))
    assert route.call_count == 3
    assert_nothing_left(tmp_path)


@respx.mock
def test_a_final_error_is_not_retried(tmp_path: Path) -> None:
    """A 404 (say, an expired export) is the answer; its coded issue is in the message."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-found", "diagnostics": "Patient p1 gone"}],
    }
    route = respx.get(ON_SERVER).mock(return_value=httpx.Response(404, json=outcome))
    with pytest.raises(HttpStatusError, match="error/not-found") as caught:
        fetch(tmp_path, ON_SERVER)
    assert route.call_count == 1
    assert "p1" not in str(caught.value)
    assert caught.value.detail == "Patient p1 gone"


class TokenPerRequest(httpx.Auth):
    """An auth that issues token 1, then token 2, ... one per request, and never retries."""

    def __init__(self) -> None:
        self.issued = 0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.issued += 1
        request.headers["Authorization"] = f"Bearer token-{self.issued}"
        yield request


class RefreshingAuth(TokenPerRequest):
    """An auth that, like SmartBackendAuth, tries one fresh token itself after a 401."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.issued += 1
        request.headers["Authorization"] = f"Bearer token-{self.issued}"
        response = yield request
        if response.status_code == 401:
            self.issued += 1
            request.headers["Authorization"] = f"Bearer token-{self.issued}"
            yield request


def expired_token_1(request: httpx.Request) -> httpx.Response:
    if request.headers.get("Authorization") == "Bearer token-1":
        return httpx.Response(401)
    return ok()


@pytest.mark.parametrize("auth", [TokenPerRequest, RefreshingAuth])
@respx.mock
def test_an_expired_token_gets_one_fresh_one(tmp_path: Path, auth: type[httpx.Auth]) -> None:
    """Exports last hours: a 401 to token 1 is followed by one attempt with token 2."""
    route = respx.get(ON_SERVER).mock(side_effect=expired_token_1)
    record = fetch(tmp_path, ON_SERVER, auth=auth())
    assert record.size == len(BODY)
    sent = [call.request.headers["Authorization"] for call in route.calls]
    assert sent == ["Bearer token-1", "Bearer token-2"]


@pytest.mark.parametrize("auth", [TokenPerRequest, RefreshingAuth])
@respx.mock
def test_a_second_401_is_the_answer(tmp_path: Path, auth: type[httpx.Auth]) -> None:
    """One fresh token only, whoever tries it: then the 401 stands."""
    route = respx.get(ON_SERVER).mock(return_value=httpx.Response(401))
    with pytest.raises(HttpStatusError, match="HTTP 401"):
        fetch(tmp_path, ON_SERVER, auth=auth())
    assert route.call_count == 2


@respx.mock
def test_smart_backend_auth_refreshes_an_expired_token_for_a_file(tmp_path: Path) -> None:
    """The real SMART auth: the file's 401 to token A brings token B from the token endpoint."""
    token_url = "https://auth.test/oauth2/token"
    tokens = respx.post(token_url).mock(
        side_effect=[
            httpx.Response(200, json={"access_token": f"tok{n}", "token_type": "bearer"})
            for n in "AB"
        ]
    )
    route = respx.get(ON_SERVER).mock(
        side_effect=lambda r: (
            ok() if r.headers["Authorization"] == "Bearer tokB" else httpx.Response(401)
        )
    )
    key = ec.generate_private_key(ec.SECP384R1())

    async def main() -> DownloadedFile:
        async with httpx.AsyncClient() as http:
            http.auth = SmartBackendAuth(
                client_id="trial-adapter",
                private_key=key,
                algorithm="ES384",
                kid="k1",
                scopes=["system/Observation.rs"],
                http=http,
                base=BASE,
                token_endpoint=token_url,
            )
            client = FhirClient(http, BASE)
            return await download(
                client,
                OutputFile("Observation", ON_SERVER),
                tmp_path / "Observation.000.ndjson",
                requires_token=True,
                max_bytes=1 << 20,
                deadline_seconds=60,
            )

    assert asyncio.run(main()).size == len(BODY)
    assert tokens.call_count == 2
    sent = [call.request.headers["Authorization"] for call in route.calls]
    assert sent == ["Bearer tokA", "Bearer tokB"]


@respx.mock
def test_a_401_without_a_token_is_not_retried(tmp_path: Path) -> None:
    """A file that needs no token: a 401 is the storage's answer."""
    route = respx.get(SIGNED).mock(return_value=httpx.Response(401))
    with pytest.raises(HttpStatusError, match="HTTP 401"):
        fetch(tmp_path, SIGNED, requires_token=False)
    assert route.call_count == 1


@respx.mock
def test_a_signed_urls_query_is_in_no_log_and_no_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Retries, redirects and failures of a signed URL: logs and messages never show the query."""
    respx.get(ON_SERVER).mock(return_value=redirect(SIGNED))
    respx.get(SIGNED).mock(return_value=httpx.Response(503, text=f"busy {SIGNED}"))
    with caplog.at_level(logging.DEBUG), pytest.raises(TemporaryHttpError) as caught:
        fetch(tmp_path, ON_SERVER, retry=RetryPolicy(attempts=3))
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert ours
    assert not [m for m in ours if SECRET in m]
    assert SECRET not in str(caught.value)
    assert "https://storage.example/bucket/obs.ndjson" in str(caught.value)
    for error in (UntrustedUrlError, LimitExceededError):
        respx.get(SIGNED).mock(return_value=ok(b"x" * 200))
        with pytest.raises(error) as other:
            fetch(tmp_path, SIGNED, requires_token=error is UntrustedUrlError, max_bytes=100)
        assert SECRET not in str(other.value)


# -- many files ------------------------------------------------------------------------------------


REQUEST = ExportRequest(level="system", types=("Patient", "Observation"))


def manifest(*output: OutputFile, **sections: Any) -> Manifest:
    return Manifest(
        transaction_time="2026-06-01T02:00:00Z",
        requires_access_token=sections.pop("requires_access_token", True),
        output=output,
        **sections,
    )


def sweep_all(
    folder: JobFolder,
    state: JobState,
    the_manifest: Manifest,
    *,
    concurrency: int = 4,
    on_file: Callable[[DownloadedFile], None] | None = None,
    **options: Any,
) -> JobState:
    async def call(client: FhirClient) -> JobState:
        return await download_all(
            client,
            the_manifest,
            folder,
            state,
            max_bytes=1 << 20,
            deadline_seconds=600,
            concurrency=concurrency,
            on_file=on_file,
        )

    result: JobState = run(call, **options)
    return result


def test_files_are_numbered_per_type_in_manifest_order() -> None:
    """Stable across runs: a file's index is its place among the manifest's files of its type."""
    plan = plan_files(
        manifest(
            OutputFile("Observation", f"{BASE}/o1"),
            OutputFile("Patient", f"{BASE}/p1"),
            OutputFile("Observation", f"{BASE}/o2"),
            error=(OutputFile("OperationOutcome", f"{BASE}/e1"),),
            deleted=(OutputFile("Bundle", f"{BASE}/d1"), OutputFile("Bundle", f"{BASE}/d2")),
        )
    )
    assert [(path, file.url.rsplit("/", 1)[1]) for path, file in plan] == [
        ("Observation.000.ndjson", "o1"),
        ("Patient.000.ndjson", "p1"),
        ("Observation.001.ndjson", "o2"),
        ("errors/OperationOutcome.000.ndjson", "e1"),
        ("deleted/Bundle.000.ndjson", "d1"),
        ("deleted/Bundle.001.ndjson", "d2"),
    ]


@respx.mock
def test_a_manifest_type_that_is_no_resource_type_stops_before_any_request(
    tmp_path: Path,
) -> None:
    """The type becomes part of a file name."""
    folder = JobFolder.open(tmp_path, KEY)
    with pytest.raises(InvalidResponseError, match="not a FHIR resource type"):
        sweep_all(folder, JobState(REQUEST, "t"), manifest(OutputFile("../x", f"{BASE}/o1")))
    assert not respx.calls


@respx.mock
def test_download_all_writes_every_section_and_saves_each_file(tmp_path: Path) -> None:
    """Outputs at the top, errors and deleted in their folders, each recorded as it finishes."""
    files = {
        f"{BASE}/o1": BODY,
        f"{TRUSTED}/o2": BODY + BODY,
        f"{BASE}/p1": b'{"resourceType":"Patient","id":"p1"}\n',
        f"{BASE}/e1": b'{"resourceType":"OperationOutcome"}\n',
        f"{BASE}/d1": b'{"resourceType":"Bundle"}\n',
    }
    for url, body in files.items():
        respx.get(url).mock(return_value=ok(body))
    the_manifest = manifest(
        OutputFile("Observation", f"{BASE}/o1"),
        OutputFile("Observation", f"{TRUSTED}/o2"),
        OutputFile("Patient", f"{BASE}/p1"),
        error=(OutputFile("OperationOutcome", f"{BASE}/e1"),),
        deleted=(OutputFile("Bundle", f"{BASE}/d1"),),
    )
    folder = JobFolder.open(tmp_path, KEY)
    seen: list[str] = []
    state = sweep_all(
        folder, JobState(REQUEST, "t"), the_manifest, on_file=lambda f: seen.append(f.path)
    )
    expected = {
        "Observation.000.ndjson": files[f"{BASE}/o1"],
        "Observation.001.ndjson": files[f"{TRUSTED}/o2"],
        "Patient.000.ndjson": files[f"{BASE}/p1"],
        "errors/OperationOutcome.000.ndjson": files[f"{BASE}/e1"],
        "deleted/Bundle.000.ndjson": files[f"{BASE}/d1"],
    }
    assert sorted(seen) == sorted(expected)
    for path, body in expected.items():
        assert (folder.path / path).read_bytes() == body
        assert stat.S_IMODE((folder.path / path).stat().st_mode) == 0o600
    assert state.manifest == the_manifest
    assert folder.load(verify=True) == state
    assert {f.path for f in state.downloaded} == set(expected)
    assert all(c.request.headers["Authorization"] == "Bearer tok" for c in respx.calls)


@respx.mock
def test_a_resume_fetches_only_what_is_missing(tmp_path: Path) -> None:
    """After a kill: the whole recorded file stays, the `.part` and the damaged one are redone."""
    the_manifest = manifest(
        OutputFile("Observation", f"{BASE}/o1"),
        OutputFile("Observation", f"{BASE}/o2"),
        OutputFile("Observation", f"{BASE}/o3"),
    )
    folder = JobFolder.open(tmp_path, KEY)
    routes = [respx.get(f"{BASE}/o{n}").mock(return_value=ok()) for n in (1, 2, 3)]
    first = sweep_all(folder, JobState(REQUEST, "t"), the_manifest)
    assert len(first.downloaded) == 3
    # The kill: o2's file cut short after it was recorded, o3 never recorded, its `.part` left.
    (folder.path / "Observation.001.ndjson").write_bytes(BODY[:10])
    first.downloaded = [f for f in first.downloaded if f.path != "Observation.002.ndjson"]
    folder.save(first)
    (folder.path / ".Observation.002.ndjson.part").write_bytes(BODY[:5])
    resumed = folder.load()
    assert resumed is not None
    assert [f.path for f in resumed.downloaded] == ["Observation.000.ndjson"]
    sweep_all(folder, resumed, the_manifest)
    assert [r.call_count for r in routes] == [1, 2, 2]
    again = folder.load(verify=True)
    assert again is not None
    assert len(again.downloaded) == 3
    assert not list(folder.path.glob(".*.part"))


@respx.mock
def test_a_signed_url_refreshed_with_the_manifest_is_the_same_file(tmp_path: Path) -> None:
    """A manifest fetched again has new signatures: the files already here still count."""
    folder = JobFolder.open(tmp_path, KEY)
    old = manifest(OutputFile("Observation", SIGNED), requires_access_token=False)
    respx.get(SIGNED).mock(return_value=ok())
    state = sweep_all(folder, JobState(REQUEST, "t"), old)
    fresh_url = SIGNED.replace(SECRET, "FRESH")
    fresh = respx.get(fresh_url).mock(return_value=ok())
    new = manifest(OutputFile("Observation", fresh_url), requires_access_token=False)
    sweep_all(folder, state, new)
    assert not fresh.called


@pytest.mark.parametrize(("concurrency", "slots", "peak"), [(2, 4, 2), (4, 1, 1), (3, 8, 3)])
@respx.mock
def test_downloads_in_flight_stay_within_concurrency_and_the_limiter(
    tmp_path: Path, concurrency: int, slots: int, peak: int
) -> None:
    """Both bounds hold: `concurrency` files at once, each holding a slot of the limiter."""
    flight = Flight()
    for n in range(6):
        respx.get(f"{BASE}/o{n}").mock(
            side_effect=lambda _: httpx.Response(
                200, stream=Chunks([b"x\n"] * 3, pause=0.01, flight=flight)
            )
        )
    the_manifest = manifest(*(OutputFile("Observation", f"{BASE}/o{n}") for n in range(6)))
    folder = JobFolder.open(tmp_path, KEY)
    state = sweep_all(
        folder,
        JobState(REQUEST, "t"),
        the_manifest,
        concurrency=concurrency,
        limits=Limits(max_concurrent=slots),
    )
    assert len(state.downloaded) == 6
    assert flight.peak == peak


@respx.mock
def test_the_first_failure_cancels_the_rest_and_is_raised_as_it_is(tmp_path: Path) -> None:
    """Not an exception group; finished files stay recorded, files in flight leave no `.part`."""
    respx.get(f"{BASE}/fast").mock(return_value=ok())
    respx.get(f"{BASE}/slow").mock(
        side_effect=lambda _: httpx.Response(200, stream=Chunks([b"x\n"] * 50, pause=0.02))
    )
    respx.get(f"{BASE}/gone").mock(
        side_effect=lambda _: httpx.Response(404, stream=Chunks([b"{}"], pause=0.05))
    )
    the_manifest = manifest(
        OutputFile("Patient", f"{BASE}/fast"),
        OutputFile("Observation", f"{BASE}/slow"),
        OutputFile("Observation", f"{BASE}/gone"),
    )
    folder = JobFolder.open(tmp_path, KEY)
    with pytest.raises(HttpStatusError, match="HTTP 404"):
        sweep_all(folder, JobState(REQUEST, "t"), the_manifest)
    saved = folder.load()
    assert saved is not None
    assert [f.path for f in saved.downloaded] == ["Patient.000.ndjson"]
    assert sorted(p.name for p in folder.path.iterdir()) == [
        ".job.json",
        "Patient.000.ndjson",
        "deleted",
        "errors",
    ]
