"""HTTP handlers of the simulated vLLM server.

Handlers parse (``protocol``), run the request through the latency model (``engine``),
inject faults (``faults``) and answer in OpenAI shapes (``shapes``). Timing facts of each
served request are exposed in ``x-sim-*`` response headers so tests can assert on the
model's numbers instead of on wall-clock time.

Echo mode: a request with header ``x-sim-echo: 1`` on a text generation endpoint gets,
as its generated text, the JSON ``{"body": <request body>, "headers": {<lower-cased
name>: <value>}}`` of what the simulator received, so gateway tests can check what was
forwarded (rewritten model name, injected system prompt, added headers...).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from mixroute.sim import protocol, shapes
from mixroute.sim.engine import Engine, QueueFullError, RunningRequest
from mixroute.sim.faults import FaultInjector
from mixroute.sim.metrics import render_metrics
from mixroute.sim.pooling import embed, similarity, to_base64
from mixroute.sim.settings import SimSettings
from mixroute.sim.tokenizer import count_tokens, encode, generate_pieces, render_messages

HEADER_ECHO = "x-sim-echo"
PREFILL_ENGINE_PREFIX = "sim-prefill:"
HEADER_QUEUE_MS = "x-sim-queue-ms"
HEADER_PREFILL_MS = "x-sim-prefill-ms"
HEADER_PROMPT_TOKENS = "x-sim-prompt-tokens"
HEADER_CACHED_TOKENS = "x-sim-cached-tokens"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Output = shapes.ChatOutput | shapes.CompletionOutput
Parser = Callable[[dict[str, Any], int, int], protocol.GenerationRequest]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _timing_headers(running: RunningRequest) -> dict[str, str]:
    return {
        HEADER_QUEUE_MS: f"{running.queue_s * 1000:.3f}",
        HEADER_PREFILL_MS: f"{running.prefill_s * 1000:.3f}",
        HEADER_PROMPT_TOKENS: str(running.prompt_tokens),
        HEADER_CACHED_TOKENS: str(running.cached_tokens),
    }


@dataclass(frozen=True, slots=True)
class _Faults:
    crash: bool
    hang: bool


@dataclass(frozen=True, slots=True)
class _Answer:
    """What a generation request will produce: text pieces (one per decode step)."""

    pieces: list[str]
    completion_tokens: int
    finish: str


class SimHandlers:
    """One instance per app; holds no state of its own beyond its collaborators."""

    def __init__(self, settings: SimSettings, engine: Engine, faults: FaultInjector) -> None:
        self._settings = settings
        self._engine = engine
        self._faults = faults
        self._created = shapes.now()

    def register(self, app: web.Application) -> None:
        generation: list[tuple[str, Parser, type[Output]]] = [
            ("/v1/chat/completions", protocol.parse_chat, shapes.ChatOutput),
            ("/v1/completions", protocol.parse_completion, shapes.CompletionOutput),
            ("/v1/responses", protocol.parse_responses, shapes.ResponsesOutput),
            ("/v1/messages", protocol.parse_messages, shapes.MessagesOutput),
        ]
        for path, parser, output in generation:
            app.router.add_post(path, self._generation_handler(parser, output))
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/rerank", self.rerank)
        app.router.add_post("/v1/score", self.score)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)

    # -- plumbing ---------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = protocol.parse_body(await request.read())
        protocol.check_model(body, self._settings.model)
        return body

    def _inject(self) -> _Faults:
        """Number the request and draw its faults; a drawn error is raised right away."""
        crash = self._faults.arrive()
        if self._faults.should_fail():
            raise protocol.SimError(500, "Simulated engine failure.", "InternalServerError")
        return _Faults(crash=crash, hang=self._faults.should_hang())

    async def _hang_after_headers(
        self, request: web.Request, headers: dict[str, str], content_type: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        response.content_type = content_type
        await response.prepare(request)
        await self._faults.hang_forever()
        return response

    def _echo_text(self, request: web.Request, body: dict[str, Any]) -> str:
        headers = {name.lower(): value for name, value in request.headers.items()}
        return orjson.dumps({"body": body, "headers": headers}).decode()

    # -- text generation --------------------------------------------------------------

    def _generation_handler(
        self, parser: Parser, output_type: type[Output]
    ) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            body = await self._body(request)
            gen = parser(body, self._settings.max_tokens_default, self._settings.max_model_len)
            return await self._generate(request, body, gen, output_type(self._settings.model))

        return handler

    async def _generate(
        self,
        request: web.Request,
        body: dict[str, Any],
        gen: protocol.GenerationRequest,
        output: Output,
    ) -> web.StreamResponse:
        faults = self._inject()
        if request.headers.get(HEADER_ECHO) == "1":
            text = self._echo_text(request, body)
            answer = _Answer([text], count_tokens(text), "stop")
        else:
            pieces = generate_pieces(gen.prompt_ids, gen.max_tokens, self._settings.seed)
            answer = _Answer(pieces, len(pieces), "length" if gen.length_limited else "stop")
        params = body.get("kv_transfer_params")
        params = params if isinstance(params, dict) else {}
        remote_prefill = (
            self._settings.role in ("decode", "both")
            and params.get("do_remote_prefill") is True
            and str(params.get("remote_engine_id", "")).startswith(PREFILL_ENGINE_PREFIX)
        )
        try:
            async with self._engine.schedule(gen.prompt_ids, remote_prefill) as running:
                headers = _timing_headers(running)
                if faults.hang and self._settings.hang_mode == "before-headers":
                    await self._faults.hang_forever()
                if gen.stream:
                    return await self._stream(
                        request, running, headers, gen, output, answer, faults
                    )
                if faults.crash:
                    self._faults.crash("non-streaming request before its response")
                if faults.hang:
                    return await self._hang_after_headers(request, headers, "application/json")
                async for _ in running.steps(len(answer.pieces)):
                    pass
                running.finish(answer.finish)
                full = output.full(
                    "".join(answer.pieces),
                    answer.finish,
                    len(gen.prompt_ids),
                    answer.completion_tokens,
                )
                if self._settings.role == "prefill" and params.get("do_remote_decode") is True:
                    full["kv_transfer_params"] = self._transfer_params(request, gen)
                return json_response(full, headers=headers)
        except QueueFullError:
            raise self._queue_full() from None

    def _transfer_params(
        self, request: web.Request, gen: protocol.GenerationRequest
    ) -> dict[str, Any]:
        """What vLLM's NIXL connector returns from a prefill: where the KV blocks are."""
        blocks = len(gen.prompt_ids) // self._settings.block_size
        host, _, port = (request.host or "127.0.0.1:0").rpartition(":")
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_engine_id": PREFILL_ENGINE_PREFIX + (self._settings.replica_name or host),
            "remote_block_ids": list(range(blocks)),
            "remote_host": host,
            "remote_port": int(port) if port.isdigit() else 0,
        }

    def _queue_full(self) -> protocol.SimError:
        return protocol.SimError(
            503,
            f"The waiting queue is full ({self._settings.max_waiting} requests).",
            "ServiceUnavailableError",
        )

    async def _stream(
        self,
        request: web.Request,
        running: RunningRequest,
        headers: dict[str, str],
        gen: protocol.GenerationRequest,
        output: Output,
        answer: _Answer,
        faults: _Faults,
    ) -> web.StreamResponse:
        """SSE, one chunk per output token, each written (flushed) as the model emits it."""
        response = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        try:
            for chunk in output.stream_start():
                await response.write(_sse(chunk))
            async for index in running.steps(len(answer.pieces)):
                await response.write(_sse(output.stream_piece(answer.pieces[index])))
                if index == 0 and faults.crash:
                    await asyncio.sleep(0.01)  # let the kernel push the chunk out first
                    self._faults.crash("mid-stream, after the first token")
                if index == 0 and faults.hang:
                    await self._faults.hang_forever()
                if index == 0 and self._faults.stall_s > 0:
                    await asyncio.sleep(self._faults.stall_s)
            running.finish(answer.finish)
            await response.write(_sse(output.stream_end(answer.finish)))
            if gen.include_usage:
                usage = output.stream_usage(len(gen.prompt_ids), answer.completion_tokens)
                await response.write(_sse(usage))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; the engine counts an abort if not finished
        return response

    # -- pooling ------------------------------------------------------------------------

    async def _pool(self, prompt_ids: list[int]) -> dict[str, str]:
        """Run a pooling request through the engine: queue + prefill, no decode."""
        faults = self._inject()
        try:
            async with self._engine.schedule(prompt_ids) as running:
                if faults.hang:
                    await self._faults.hang_forever()
                if faults.crash:
                    self._faults.crash("pooling request before its response")
                running.finish("stop")
                return _timing_headers(running)
        except QueueFullError:
            raise self._queue_full() from None

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        parsed = protocol.parse_embedding(body, self._settings.embedding_dim)
        all_ids = [token for ids in parsed.inputs for token in ids]
        headers = await self._pool(all_ids)
        data = []
        for index, ids in enumerate(parsed.inputs):
            vector = embed(ids, parsed.dimensions, self._settings.seed)
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": to_base64(vector) if parsed.base64 else vector,
                }
            )
        result = {
            "id": shapes.new_id("embd"),
            "object": "list",
            "created": shapes.now(),
            "model": self._settings.model,
            "data": data,
            "usage": {"prompt_tokens": len(all_ids), "total_tokens": len(all_ids)},
        }
        return json_response(result, headers=headers)

    async def rerank(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        query = body.get("query")
        if not isinstance(query, str):
            raise protocol.bad_request("'query' must be a string.", "query")
        documents = protocol.parse_document_texts(body.get("documents"), "documents")
        top_n = body.get("top_n")
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int)):
            raise protocol.bad_request("'top_n' must be an integer.", "top_n")
        query_ids = encode(query)
        doc_ids = [encode(text) for text in documents]
        total = sum(len(query_ids) + len(ids) for ids in doc_ids)
        headers = await self._pool([*query_ids, *(t for ids in doc_ids for t in ids)])
        scores = [similarity(query_ids, ids) for ids in doc_ids]
        ranked = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
        if top_n is not None and top_n > 0:
            ranked = ranked[:top_n]
        results = [
            {"index": i, "document": {"text": documents[i]}, "relevance_score": scores[i]}
            for i in ranked
        ]
        result = {
            "id": shapes.new_id("rerank"),
            "model": self._settings.model,
            "usage": {"total_tokens": total},
            "results": results,
        }
        return json_response(result, headers=headers)

    async def score(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        left = [encode(t) for t in protocol.parse_document_texts(body.get("text_1"), "text_1")]
        right = [encode(t) for t in protocol.parse_document_texts(body.get("text_2"), "text_2")]
        if len(left) == 1:
            left = left * len(right)
        if len(left) != len(right):
            raise protocol.bad_request("'text_1' and 'text_2' lists differ in length.", "text_1")
        pairs = list(zip(left, right, strict=True))
        tokens = [token for a, b in pairs for token in (*a, *b)]
        headers = await self._pool(tokens)
        result = {
            "id": shapes.new_id("score"),
            "object": "list",
            "created": shapes.now(),
            "model": self._settings.model,
            "data": [
                {"index": i, "object": "score", "score": similarity(a, b)}
                for i, (a, b) in enumerate(pairs)
            ],
            "usage": {
                "prompt_tokens": len(tokens),
                "total_tokens": len(tokens),
                "completion_tokens": 0,
            },
        }
        return json_response(result, headers=headers)

    # -- utility endpoints ------------------------------------------------------------

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's ``/tokenize``: ``prompt`` or chat ``messages`` (rendered by the template)."""
        body = await self._body(request)
        if isinstance(body.get("prompt"), str):
            text = body["prompt"]
        elif isinstance(body.get("messages"), list):
            add_prompt = body.get("add_generation_prompt", True) is not False
            try:
                text = render_messages(body["messages"], add_generation_prompt=add_prompt)
            except ValueError as exc:
                raise protocol.bad_request(str(exc), "messages") from None
        else:
            raise protocol.bad_request("Give 'prompt' (string) or 'messages' (list).", "prompt")
        tokens = encode(text)
        result = {
            "count": len(tokens),
            "max_model_len": self._settings.max_model_len,
            "tokens": tokens,
            "token_strs": None,
        }
        return json_response(result)

    async def models(self, request: web.Request) -> web.Response:
        return json_response(
            shapes.model_list(self._settings.model, self._created, self._settings.max_model_len)
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        text = render_metrics(
            self._settings.model,
            self._engine.counters,
            self._engine.gauges(),
            self._engine.cache_config(),
        )
        return web.Response(
            body=text.encode("utf-8"), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )
