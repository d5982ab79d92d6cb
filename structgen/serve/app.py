"""The OpenAI-compatible HTTP API: FastAPI routes over one ``Scheduler``.

A request is validated (pydantic: wrong types are a 400 naming the field), prepared off the event
loop (prompt rendering, the constraint compile: one worker thread, as tokenizers are not safe to
share between threads), queued (429 when full), and answered whole or as server-sent events.
Every error reply has OpenAI's shape, 500s included, and carries no traceback (it is logged).
A client that disconnects cancels its row: it leaves the batch before the next step.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from structgen.backends.transformers import Model
from structgen.decoding.generate import DEFAULT_MAX_TOKENS
from structgen.errors import ServerBusyError, StructgenError
from structgen.schema import DEFAULT_WHITESPACE
from structgen.serve import protocol
from structgen.serve.completion import Answer, Completion, prepare
from structgen.serve.protocol import APIError, ChatRequest
from structgen.serve.scheduler import Job, Scheduler

log = logging.getLogger("structgen.serve")


@dataclass
class _Done:
    error: BaseException | None


def create_app(model: Model, *, max_batch: int = 8, max_queue: int = 64, api_key: str | None = None,
               whitespace: str = DEFAULT_WHITESPACE, max_tokens: int = DEFAULT_MAX_TOKENS) -> FastAPI:
    """The app serving ``model``; ``api_key``: every request must send ``Authorization: Bearer``
    with it. ``max_tokens`` is the budget of a request that names none."""
    scheduler = Scheduler(model, max_batch=max_batch, max_queue=max_queue)
    preparing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="structgen-prepare")
    model.tokenizer_info  # built now rather than by the first request

    @asynccontextmanager
    async def lifespan(_app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()
            preparing.shutdown(wait=False, cancel_futures=True)

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided: send the server's --api-key as "
                                "'Authorization: Bearer <key>'", code="invalid_api_key")

    app = FastAPI(title="structgen", lifespan=lifespan, dependencies=[Depends(authorize)],
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model.name, "live": scheduler.live,
                "waiting": scheduler.waiting, **scheduler.stats}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0,
                                            "owned_by": "structgen"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        loop = asyncio.get_running_loop()
        completion = await loop.run_in_executor(preparing, functools.partial(
            prepare, model, body, whitespace=whitespace, max_tokens=max_tokens))
        events: asyncio.Queue = asyncio.Queue()

        def hand_over(item) -> None:  # on the decoding thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody is listening
                job.cancel()

        job = Job(completion.row, completion.sampling, on_token=hand_over,
                  on_done=lambda error: hand_over(_Done(error)))
        try:
            scheduler.submit(job)
        except ServerBusyError as error:
            raise APIError(429, f"the server is busy: {error}; retry later", code="rate_limit_exceeded",
                           kind="rate_limit_exceeded") from None
        reply = _Reply(job, Answer(model, completion), events, completion, model.name)
        if body.stream:
            return StreamingResponse(reply.stream(body.include_usage), media_type="text/event-stream")
        return await reply.whole(request)

    return app


class _Reply:
    """One request's answer as it arrives from the decoding thread: whole, or streamed."""

    def __init__(self, job: Job, answer: Answer, events: asyncio.Queue, completion: Completion, model: str):
        self.job, self.answer, self.events = job, answer, events
        self.completion, self.model = completion, model
        self.id = protocol.completion_id()

    async def _next(self):
        """The deltas of the next token, or the ``_Done`` that ends the row."""
        item = await self.events.get()
        if isinstance(item, _Done):
            return item
        deltas = self.answer.feed(item)
        if self.answer.stopped:
            self.job.cancel()  # a stop string: the row may leave the batch
        return deltas

    def _usage(self) -> dict:
        row = self.completion.row
        return protocol.usage(len(row.prompt_ids), len(row.tokens))

    async def whole(self, request: Request):
        async def collect():
            while not isinstance(item := await self._next(), _Done):
                pass
            return item

        collecting = asyncio.ensure_future(collect())
        watching = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not collecting.done():  # the client left (or the server is stopping)
                collecting.cancel()
                self.job.cancel()
        if not collecting.done() or collecting.cancelled():
            return Response(status_code=499)
        try:
            done = collecting.result()
            if done.error is not None:
                raise done.error
            _, message, reason = self.answer.finish(self.completion.row)
        except Exception as error:
            raise _failure(error) from None
        return protocol.completion(self.id, self.model, message, reason, self._usage())

    async def stream(self, include_usage: bool):
        def event(body: dict) -> str:
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        try:
            yield event(protocol.chunk(self.id, self.model, {"role": "assistant", "content": ""}))
            while not isinstance(item := await self._next(), _Done):
                for delta in item:
                    yield event(protocol.chunk(self.id, self.model, delta))
            if item.error is not None:
                raise item.error
            deltas, _, reason = self.answer.finish(self.completion.row)
            for delta in deltas:
                yield event(protocol.chunk(self.id, self.model, delta))
            yield event(protocol.chunk(self.id, self.model, {}, reason))
            if include_usage:
                yield event(protocol.chunk(self.id, self.model, None, usage_=self._usage()))
            yield "data: [DONE]\n\n"
        except Exception as error:  # the status line is sent: the error goes as an event
            yield event(_failure(error).body())
        finally:
            self.job.cancel()  # a client that left: the row leaves before the next step


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _failure(error: Exception) -> APIError:
    """A failure after the request was accepted: structgen's own (a 500 naming it), or a bug."""
    if isinstance(error, APIError):
        return error
    if not isinstance(error, StructgenError):
        log.error("request failed", exc_info=error)
    return APIError(500, f"{type(error).__name__}: {error}", kind="server_error", code="internal_error")


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(_request, error: APIError):
        headers = {"Retry-After": "1"} if error.status == 429 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    async def invalid(_request, error: RequestValidationError):
        problems = error.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request", "type": "invalid"}
        if first.get("type") == "json_invalid":
            reason = first.get("ctx", {}).get("error", first["msg"])
            return await api_error(None, APIError(400, f"the request body is not valid JSON: {reason}",
                                                  code="invalid_json"))
        param = _param(first.get("loc", ()))
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        message = f"{param or 'body'}: {first['msg']}{more}"
        return await api_error(None, APIError(400, message, param=param, code=first.get("type")))

    async def not_found(request: Request, _error):
        return await api_error(None, APIError(404, f"no such endpoint: {request.method} {request.url.path}",
                                              code="not_found"))

    async def not_allowed(request: Request, _error):
        return await api_error(None, APIError(405, f"{request.method} is not allowed on {request.url.path}",
                                              code="method_not_allowed"))

    async def unexpected(_request, error: Exception):
        return await api_error(None, _failure(error))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_allowed)
    app.add_exception_handler(Exception, unexpected)


def _param(location) -> str | None:
    """pydantic's error location as OpenAI's ``param``: ``messages[0].content``."""
    text = ""
    for part in location:
        if part == "body" and not text:
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _union_branch(str(part)):
            text += f".{part}" if text else str(part)
    return text or None


def _union_branch(part: str) -> bool:
    """pydantic names the branch of a union in the location (``str``, ``list[ContentPart]``,
    ``NamedToolChoice``); OpenAI's field names are lower-case identifiers."""
    return (not part.isidentifier() or part[0].isupper()
            or part in {"str", "int", "float", "bool", "dict", "list", "none"})
