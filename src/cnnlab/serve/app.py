"""The live page's web app: a FastAPI app for one trained run, made by `create_app`.

    GET  /                 the page (and /static/...: everything it needs, no CDN)
    POST /api/predict      an image (multipart field `file`, or a raw image/png or image/jpeg
                           body) -> the guess; ?activations=1 adds what the model saw and the
                           maps of every conv and pooling stage; ?top_k=3
    POST /api/explain      {input, layer, channel, row, col} -> one feature-map value as the
                           tutorial's sum, by the reference layer and by the model itself
    GET  /api/model        the model, its layer table and its training metrics
    GET  /healthz          {"status": "ok"}
    GET  /openapi.json     the API's schema (and /docs, FastAPI's page for it)

Every error is JSON, `{"error": message}`. Bodies over `max_upload_bytes` get 413 before they are
read. The model is loaded once, here; requests run in a thread pool and share nothing mutable.

    uvicorn.run(create_app(Path("runs/demo")), host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from cnnlab import __version__
from cnnlab.errors import CnnlabError, NoInkError
from cnnlab.runfiles import load_run
from cnnlab.serve.body_limit import BodyLimit
from cnnlab.serve.encoding import (
    array_json,
    decode_input,
    explanation_json,
    info_json,
    prediction_json,
    stage_json,
)
from cnnlab.serve.model_info import model_info
from cnnlab.serve.model_service import DEFAULT_REPLICAS, ModelService

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 5 * 1024 * 1024
RAW_IMAGE_TYPES = ("image/png", "image/jpeg")
UPLOAD_BODY = {  # what /api/predict reads itself, so that the schema can say it
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            **{
                kind: {"schema": {"type": "string", "format": "binary"}} for kind in RAW_IMAGE_TYPES
            },
        },
    }
}


class ExplainRequest(BaseModel):
    input: dict | list = Field(
        description="the `input` that /api/predict returned ({shape, data: base64 uint8}), "
        "or nested lists of integers 0..255 shaped like the model's input"
    )
    layer: str = Field(description="a conv layer's name, e.g. conv1")
    channel: int = Field(ge=0, description="the output channel: which feature map")
    row: int = Field(ge=0)
    col: int = Field(ge=0)


def error_response(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as {"error": message}; a bug is a 500 with no traceback in the answer."""

    @app.exception_handler(HTTPException)
    async def http_error(_request, err: HTTPException):
        return error_response(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, err: RequestValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in err.errors()
        ]
        return error_response(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(CnnlabError)
    async def user_error(_request, err: CnnlabError):
        return error_response(400, str(err))

    @app.exception_handler(Exception)
    async def server_error(_request, _err: Exception):
        return error_response(500, "internal server error")


async def read_upload(request: Request) -> bytes:
    """The image file's bytes from a multipart upload (field `file`) or a raw image body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "the multipart form has no file in the field 'file'")
            data = await upload.read()
        finally:
            await form.close()
    elif media in RAW_IMAGE_TYPES:
        data = await request.body()
    else:
        raise HTTPException(
            415,
            f"send an image as multipart/form-data (field 'file') or as a raw body with "
            f"Content-Type {' or '.join(RAW_IMAGE_TYPES)}; got {media or 'no Content-Type'}",
        )
    if not data:
        raise HTTPException(400, "the upload is empty")
    return data


def no_ink_json(err: NoInkError) -> dict:
    message = str(err)
    if not message.lower().startswith("no ink"):
        message = f"no ink: {message}"
    return {"ink": False, "message": message}


def create_app(
    run_dir: Path,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    replicas: int = DEFAULT_REPLICAS,
) -> FastAPI:
    """The app for the run in `run_dir`, loaded once, here (CheckpointError if it cannot be)."""
    run = load_run(Path(run_dir))
    service = ModelService(run, replicas)
    info = info_json(model_info(run))
    app = FastAPI(
        title="cnnlab serve",
        version=__version__,
        description=f"Draw or upload an image; watch {info['name']} ({info['dataset']}) read it.",
    )
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def answer(data: bytes, activations: bool, top_k: int, encoding: str) -> dict:
        started = time.perf_counter()
        try:
            pixels = service.prepare(data)
        except NoInkError as err:
            return no_ink_json(err)
        body = prediction_json(service.predict(pixels, top_k))
        if activations:
            body["input"] = array_json(pixels)
            body["stages"] = [stage_json(s, encoding) for s in service.feature_maps(pixels)]
            body["encoding"] = encoding
        body["ms"] = round((time.perf_counter() - started) * 1000, 2)
        return body

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.post("/api/predict", openapi_extra=UPLOAD_BODY)
    async def predict(
        request: Request,
        activations: bool = Query(False, description="add the input and every stage's maps"),
        top_k: int = Query(3, ge=1, description="how many classes to list, most probable first"),
        encoding: Literal["raw", "png"] = Query("raw", description="how maps travel"),
    ):
        """Classify one image: the label, its probability and the top classes."""
        data = await read_upload(request)
        top_k = min(top_k, len(service.classes))
        return await run_in_threadpool(answer, data, activations, top_k, encoding)

    @app.post("/api/explain")
    def explain(request: ExplainRequest):
        """One feature-map value as the tutorial's sum, with the model's own value beside it."""
        pixels = decode_input(request.input, service.input_shape)
        result = service.explain(pixels, request.layer, request.channel, request.row, request.col)
        return explanation_json(result)

    @app.get("/api/model")
    def model():
        """The model, its data, its layer table (as `cnnlab summary`) and its training."""
        return info

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": info["name"], "run": info["run"]}

    return app
