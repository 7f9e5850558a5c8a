"""The OpenAI-compatible API in front of Triton: a FastAPI app that streams from Triton's gRPC.

    python -m scripts.serving.openai_frontend --repository model_repository --triton-grpc 127.0.0.1:8001 \
        [--host 127.0.0.1 --port 9000] (--key-file run/openai_key.json | --key-env MAAS_OPENAI_KEY) \
        [--triton-key-file run/triton_key.json | --triton-key-env MAAS_TRITON_KEY] [--canary-file run/canary.json]

``maas serve start`` runs it beside tritonserver (base URL ``http://127.0.0.1:9000/v1``, key in run/openai_key.json).
Routes: ``GET /v1/models``, ``POST /v1/completions`` and ``/v1/chat/completions`` (a bearer key, like TorchServe's
inference API), ``GET /health/ready`` (no key: for probes). Requests are parsed and answered by the same code as
TorchServe's handler (``handlers/generation/openai_api.py``, ``openai_reply.py``); each choice is one request on a
``ModelStreamInfer`` stream (``openai_triton.py``). A client that goes away is noticed at the next token: its Triton
requests are cancelled, and their sequences leave the running batch at the next step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import tritonclient.grpc.aio as grpc_aio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from handlers.errors import ServingError, as_serving_error
from handlers.generation.openai_api import (
    SSE_DONE,
    ModelCard,
    OpenAIError,
    error_body,
    model_not_found,
    models_list,
    parse,
    sse,
)
from handlers.generation.openai_reply import Reply
from scripts.serving.canary import CanarySplit
from scripts.serving.keys import TritonAccess
from scripts.serving.openai_triton import TritonStream, language_models

log = logging.getLogger("maas.openai_frontend")
NO_KEY = OpenAIError("a valid API key is needed: send it as 'Authorization: Bearer <key>'", code="invalid_api_key",
                     status=401)  # fmt: skip


def create_app(models: dict[str, ModelCard], triton_grpc: str, key: str, triton_headers: dict | None = None,
               canary: CanarySplit | None = None) -> FastAPI:  # fmt: skip
    """``canary``: a running canary's share of the requests goes to ``<model>-canary`` (``canary.py``)."""
    app = FastAPI(title="maas OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    state = {"client": None}

    def client() -> grpc_aio.InferenceServerClient:
        if state["client"] is None:  # created inside the server's event loop, which the aio client binds to
            state["client"] = grpc_aio.InferenceServerClient(triton_grpc)
        return state["client"]

    def refused(request: Request) -> JSONResponse | None:
        """The 401 for a request without the key. Checked in each route, not in an HTTP middleware: Starlette's
        BaseHTTPMiddleware relays a stream through a task of its own, and a client that left was then sometimes
        not noticed until the next request (its generation ran on to the end; seen in 1 of ~25 tries)."""
        given = request.headers.get("authorization", "")
        return None if secrets.compare_digest(given.encode(), f"Bearer {key}".encode()) else failure(NO_KEY)

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        try:
            ok = await client().is_server_ready(headers=triton_headers) and all(
                [await client().is_model_ready(name, headers=triton_headers) for name in models]
            )
        except Exception:  # Triton is not up (yet)
            ok = False
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        return refused(request) or JSONResponse(models_list(sorted(models)))

    @app.post("/v1/{route:path}")
    async def generate(route: str, request: Request):
        if (denied := refused(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            return failure(OpenAIError(f"the request body is not JSON ({exc})"))
        name = body.get("model") if isinstance(body, dict) else None
        card = models.get(name) if isinstance(name, str) else None
        try:
            if card is None and isinstance(body, dict):
                raise model_not_found(name, sorted(models))
            parsed = parse(route, body, card or _ANY)
        except ServingError as exc:
            return failure(exc)
        reply = Reply(parsed)
        target = canary.triton_model(parsed.model) if canary else parsed.model
        stream = TritonStream(client(), target, parsed.choices, triton_headers or {})
        answers = watch(stream, request)
        if parsed.stream:
            return await start_stream(reply, answers)
        try:
            async for index, answer in answers:
                reply.add(index, answer)
        except ServingError as exc:
            return failure(exc)
        return JSONResponse(reply.whole())

    return app


_ANY = ModelCard("", None, 0, 0)  # parse refuses a body that is not an object before it needs a model


def failure(error: ServingError) -> JSONResponse:
    retry = getattr(error, "retry_after_s", None)  # Overloaded: when to come back
    headers = {"Retry-After": str(retry)} if retry else None
    return JSONResponse(error_body(error), status_code=error.http_status, headers=headers)


async def watch(stream: TritonStream, request: Request) -> AsyncIterator[tuple[int, dict]]:
    """The stream's answers while the client is there; when it has gone, the Triton requests are cancelled."""
    async for item in stream.answers():
        if await request.is_disconnected():
            stream.cancel()
            return
        yield item


async def start_stream(reply: Reply, answers: AsyncIterator[tuple[int, dict]]):
    """Server-Sent Events; a refusal before the first answer is still a plain error response with its status."""
    try:
        first = await anext(answers)
    except StopAsyncIteration:
        first = None
    except ServingError as exc:
        return failure(exc)

    async def events():
        try:
            if first is not None:
                for chunk in reply.add(*first):
                    yield sse(chunk)
            async for index, answer in answers:
                for chunk in reply.add(index, answer):
                    yield sse(chunk)
        except Exception as exc:  # after the first chunk the status is sent: the error goes in the stream
            yield sse(error_body(as_serving_error(exc)))
        yield SSE_DONE

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def read_key(path: Path | None, variable: str | None) -> str:
    key = os.environ.get(variable, "") if variable else json.loads(Path(path).read_text())["key"]
    if not key:
        raise ValueError(f"no API key in {variable or path}")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True, help="the model repository Triton serves")
    parser.add_argument("--triton-grpc", default="127.0.0.1:8001", help="Triton's gRPC address")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key-file", type=Path, help='JSON {"key": ...}: the API key clients send')
    keys.add_argument("--key-env", help="environment variable holding the API key")
    triton_keys = parser.add_mutually_exclusive_group()
    triton_keys.add_argument("--triton-key-file", type=Path, help="Triton's key file, when inference is behind it")
    triton_keys.add_argument("--triton-key-env", help="environment variable holding Triton's key")
    parser.add_argument("--canary-file", type=Path, help="run/canary.json: split requests to canaries as it says")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.triton_key_env:
        access = TritonAccess(os.environ.get(args.triton_key_env, ""), protect_inference=True)
    else:
        access = TritonAccess.read(args.triton_key_file) if args.triton_key_file else None
    triton_headers = access.inference_headers(grpc=True) if access and access.key else {}
    models = language_models(args.repository)
    log.info("serving %s on http://%s:%d/v1", ", ".join(models) or "no language model", args.host, args.port)
    canary = CanarySplit(args.canary_file) if args.canary_file else None
    app = create_app(models, args.triton_grpc, read_key(args.key_file, args.key_env), triton_headers, canary)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
