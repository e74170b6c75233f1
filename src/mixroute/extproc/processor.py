"""The ext_proc v3 ``Process`` stream: one gRPC stream per HTTP request, state on the stack.

What Envoy sends, and what comes back (docs/envoy.md has the picture):

1. ``request_headers``: remember the path and the few headers the pipeline reads (with
   access control on, the key headers and Envoy's ``source.address`` attribute too). A path
   that is not an inference path is passed through with a ``mode_override`` that turns off
   every later phase of this request, so it costs one message.
2. ``request_body`` (BUFFERED: the whole body at once): run the gateway's pipeline. Either
   an immediate response (guard refusal, cache hit, error) or the mutations: the body with
   the chosen model, system prompt, reasoning fields and filtered tools, ``x-selected-model``
   (and ``x-gateway-destination-endpoint``) for Envoy's route match, ``clear_route_cache``.
3. ``response_headers``: add the explain headers. If the answer must be seen (the cache
   captures it, or PII placeholders must be put back), switch the response body on with a
   ``mode_override``: STREAMED for SSE, BUFFERED for JSON. Otherwise the body never comes.
4. ``response_body``: feed the tap chunk by chunk; store the answer once it completed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from mixroute import headers as h
from mixroute.cache.policy import store_answer
from mixroute.context import ResponseTap
from mixroute.errors import GatewayError
from mixroute.extproc.pipeline import Forward, RequestPipeline, kind_for
from mixroute.replies import Reply, error_reply

log = logging.getLogger(__name__)

Mode = processing_mode_pb2.ProcessingMode
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# Request headers the pipeline reads; every other header is left alone and not decoded.
_WANTED = frozenset(
    {
        ":path",
        ":method",
        "content-type",
        "traceparent",
        "tracestate",
        h.REQUEST_ID,
        h.TENANT,
        h.DEBUG,
        h.CACHE_CONTROL,
    }
)
# Routing headers only the processor may set: a client's copy never reaches the route match.
_ROUTING = (h.SELECTED_MODEL, h.DESTINATION_ENDPOINT)
_DONE = b"data: [DONE]"
# Where Envoy puts the attributes the filter's ``request_attributes`` asks for.
_ATTRIBUTES = "envoy.filters.http.ext_proc"


def header(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()), append_action=OVERWRITE
    )


def immediate(reply: Reply) -> Any:
    """An Envoy local reply carrying ``reply`` (the whole body, SSE included)."""
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=reply.status),
            headers=pb.HeaderMutation(set_headers=[header(k, v) for k, v in reply.headers.items()]),
            body=reply.body,
            details="mixroute",
        )
    )


def _host(address: str) -> str | None:
    """``1.2.3.4:5678`` or ``[::1]:5678`` -> the host part (per-address limits ignore ports)."""
    if not address:
        return None
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit():
        return address
    return host.strip("[]")


class Responses:
    """The messages that do not depend on the request, built once per process."""

    def __init__(self) -> None:
        self.wait_for_body = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
        self.pass_through = pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(
                response=pb.CommonResponse(
                    header_mutation=pb.HeaderMutation(remove_headers=_ROUTING),
                    clear_route_cache=True,
                )
            ),
            mode_override=Mode(
                request_body_mode=Mode.NONE,
                response_header_mode=Mode.SKIP,
                response_body_mode=Mode.NONE,
            ),
        )
        self.response_headers = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
        self.response_body = pb.ProcessingResponse(response_body=pb.BodyResponse())
        self.request_body = pb.ProcessingResponse(request_body=pb.BodyResponse())
        self.response_trailers = pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
        self.request_trailers = pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
        self.streamed_body = Mode(response_body_mode=Mode.STREAMED, response_trailer_mode=Mode.SEND)
        self.buffered_body = Mode(response_body_mode=Mode.BUFFERED, response_trailer_mode=Mode.SEND)


class Exchange:
    """One HTTP request and its answer, as seen through one ``Process`` stream."""

    __slots__ = (
        "_body_chunks",
        "_forward",
        "_kind",
        "_length_known",
        "_path",
        "_remote",
        "_request_headers",
        "_status",
        "_streamed",
        "_tap",
        "complete",
        "recorded",
        "store",
    )

    def __init__(self) -> None:
        self._request_headers: dict[str, str] = {}
        self._kind: str | None = None
        self._path = ""
        self._remote: str | None = None
        self._body_chunks: list[bytes] = []
        self._forward: Forward | None = None
        self._tap: ResponseTap | None = None
        self._status = 0
        self._streamed = False
        self._length_known = False
        self.store = False  # the answer completed and is cacheable: store it now
        self.complete = False  # the answer passed (its headers, or its body when inspected)
        self.recorded = False

    # -- request ---------------------------------------------------------------------

    def on_request_headers(
        self, message: Any, attributes: Any, responses: Responses, pipeline: RequestPipeline
    ) -> Any | None:
        """The reply now, or None: the pipeline must run (now if there is no body)."""
        wanted = self._request_headers
        key_headers = pipeline.key_headers
        for item in message.headers.headers:
            key = item.key
            if key in _WANTED or key.startswith("x-mixroute-") or key in key_headers:
                wanted[key] = item.raw_value.decode("latin-1") if item.raw_value else item.value
        if key_headers and _ATTRIBUTES in attributes:
            self._remote = _host(attributes[_ATTRIBUTES].fields["source.address"].string_value)
        self._path = wanted.get(":path", "/")
        method = wanted.get(":method")
        if method == "GET" and self._path.split("?", 1)[0] == "/v1/models":
            return immediate(pipeline.list_models(wanted, self._remote))
        self._kind = kind_for(self._path) if method == "POST" else None
        if self._kind is None:
            return responses.pass_through
        if message.end_of_stream:
            return None
        return responses.wait_for_body

    def add_body(self, message: Any) -> bool:
        """Collect a body chunk; True when the body is complete."""
        self._body_chunks.append(message.body)
        return bool(message.end_of_stream)

    async def decide(self, pipeline: RequestPipeline, responses: Responses) -> Any:
        assert self._kind is not None
        raw = b"".join(self._body_chunks)
        self._body_chunks = []
        verdict = await pipeline.run(
            self._kind, self._path, self._request_headers, raw, self._remote
        )
        if isinstance(verdict, Reply):
            return immediate(verdict)
        self._forward = verdict
        self._tap = verdict.ctx.tap
        return pb.ProcessingResponse(
            request_body=pb.BodyResponse(response=self._mutations(verdict))
        )

    def _mutations(self, forward: Forward) -> Any:
        set_headers = [header(h.SELECTED_MODEL, forward.model)]
        set_headers.extend(header(k, v) for k, v in forward.trace_headers.items())
        remove = [k for k in self._request_headers if k.startswith("x-mixroute-")]
        # The client's API key is the gateway's business, never the upstream's.
        remove.extend(k for k in forward.ctx.client_key_headers if k in self._request_headers)
        if forward.destination is not None:
            set_headers.append(header(h.DESTINATION_ENDPOINT, forward.destination))
        else:
            remove.append(h.DESTINATION_ENDPOINT)
        common = pb.CommonResponse(
            header_mutation=pb.HeaderMutation(set_headers=set_headers, remove_headers=remove),
            clear_route_cache=True,
        )
        if forward.body is not None:
            common.header_mutation.set_headers.append(
                header("content-length", str(len(forward.body)))
            )
            common.header_mutation.set_headers.append(header("content-type", "application/json"))
            common.body_mutation.body = forward.body
        return common

    # -- response --------------------------------------------------------------------

    def on_response_headers(self, message: Any, responses: Responses) -> Any:
        forward = self._forward
        if forward is None:
            return responses.response_headers
        content_type = ""
        for item in message.headers.headers:
            key = item.key
            if key == ":status":
                self._status = int(item.raw_value or item.value)
            elif key == "content-type":
                content_type = (item.raw_value.decode("latin-1") or item.value).lower()
            elif key == "content-length":
                self._length_known = True
        set_headers = [header(k, v) for k, v in forward.ctx.response_headers.items()]
        response = pb.ProcessingResponse(
            response_headers=pb.HeadersResponse(
                response=pb.CommonResponse(
                    header_mutation=pb.HeaderMutation(set_headers=set_headers)
                )
            )
        )
        tap = self._tap
        if tap is not None and (forward.plan is None or self._status == 200):
            self._streamed = content_type.startswith("text/event-stream")
            mode = responses.streamed_body if self._streamed else responses.buffered_body
            response.mode_override.CopyFrom(mode)
        else:
            self._tap = None
            self.complete = True  # the body is not inspected: the headers are the answer
        return response

    def on_response_body(self, message: Any, responses: Responses) -> Any:
        tap = self._tap
        if tap is None:
            return responses.response_body
        chunk: bytes = message.body
        end = message.end_of_stream or message.end_of_stream_without_message
        if self._streamed:
            # The answer is complete at ``[DONE]``: a client stops reading there and may ask
            # again before the upstream's end of stream reaches us, so finish (and store) now.
            end = end or chunk.rstrip().endswith(_DONE)
            out = tap.on_chunk(chunk) if chunk else b""
            if end:
                out += tap.flush()
                self._finish(tap)
            changed = out != chunk
        else:  # BUFFERED: this one message is the whole body (trailers, if any, follow it)
            out = tap.on_body(self._status, chunk)
            self._finish(tap)
            changed = out != chunk
        if not changed:
            return responses.response_body
        common = pb.CommonResponse(body_mutation=pb.BodyMutation(body=out))
        if not self._streamed and self._length_known:
            common.header_mutation.set_headers.append(header("content-length", str(len(out))))
        return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))

    def on_response_trailers(self, responses: Responses) -> Any:
        """Trailers end the body (an HTTP/2 upstream): the answer is complete."""
        tap = self._tap
        if tap is not None and self._streamed:
            tap.flush()
            self._finish(tap)
        return responses.response_trailers

    def _finish(self, tap: ResponseTap) -> None:
        tap.on_stream_end(complete=True)
        self._tap = None
        self.complete = True
        forward = self._forward
        self.store = forward is not None and forward.plan is not None

    @property
    def forwarded(self) -> Forward | None:
        """The pipeline's verdict when the request went upstream."""
        return self._forward

    @property
    def status(self) -> int:
        """The answer's status once its headers passed (0 before)."""
        return self._status

    def end(self) -> None:
        """The gRPC stream is over, and with it the request: free its in-flight slot."""
        if self._forward is not None:
            self._forward.release()

    async def store_answer(self) -> None:
        self.store = False
        if self._forward is not None:
            await store_answer(self._forward.plan)


class ExtProcessor:
    """The ``envoy.service.ext_proc.v3.ExternalProcessor`` service (registered by name)."""

    def __init__(self, pipeline: RequestPipeline) -> None:
        self._pipeline = pipeline
        self._responses = Responses()

    async def Process(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        exchange = Exchange()
        try:
            async for reply in self._exchange(exchange, requests):
                yield reply
        finally:
            exchange.end()
            self._record(exchange)  # a stream that ended before its answer did

    async def _exchange(
        self, exchange: Exchange, requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        responses = self._responses
        async for message in requests:
            phase = message.WhichOneof("request")
            if phase == "request_headers":
                reply = exchange.on_request_headers(
                    message.request_headers, message.attributes, responses, self._pipeline
                )
                if reply is None:
                    reply = await self._decide(exchange)
            elif phase == "request_body":
                if exchange.add_body(message.request_body):
                    reply = await self._decide(exchange)
                else:
                    reply = responses.request_body
            elif phase == "response_headers":
                reply = self._guarded(
                    exchange.on_response_headers,
                    message.response_headers,
                    responses.response_headers,
                )
            elif phase == "response_body":
                reply = self._guarded(
                    exchange.on_response_body, message.response_body, responses.response_body
                )
            elif phase == "response_trailers":
                reply = exchange.on_response_trailers(responses)
            else:
                reply = responses.request_trailers
            if exchange.complete:
                self._record(exchange)
            if exchange.store:
                # Before the last chunk goes on: a client that asks again as soon as its answer
                # ended must find it (a memory store takes microseconds).
                try:
                    await exchange.store_answer()
                except Exception:
                    log.exception("storing an answer in the cache failed")
            yield reply

    def _record(self, exchange: Exchange) -> None:
        """Record a forwarded request once: Envoy may hold the stream open well after the
        answer, so the record is made when the answer is known to be complete."""
        forward = exchange.forwarded
        if forward is not None and not exchange.recorded:
            exchange.recorded = True
            self._pipeline.finish(forward, exchange.status)

    async def _decide(self, exchange: Exchange) -> Any:
        try:
            return await exchange.decide(self._pipeline, self._responses)
        except Exception:
            log.exception("the processor failed on a request")
            error = GatewayError(
                500,
                "Internal gateway error; the request id is in the logs.",
                error_type="server_error",
                code="internal_error",
            )
            return immediate(error_reply(error))

    def _guarded(self, step: Callable[[Any, Responses], Any], message: Any, fallback: Any) -> Any:
        """A failure on the answer's way back must not break the answer: pass it as it is."""
        try:
            return step(message, self._responses)
        except Exception:
            log.exception("the processor failed on a response")
            return fallback
