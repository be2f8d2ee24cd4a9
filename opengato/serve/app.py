"""`opengato serve CHECKPOINT`: a local web page to watch a checkpoint play any task, caption an
uploaded image, chat, and compare two checkpoints side by side on the same seed.

Framework: FastAPI on uvicorn. Both are small, widely used and well kept; FastAPI validates
request bodies with pydantic (already installed with tyro), turns errors into JSON, and ships a
test client; uvicorn is a plain ASGI server with no compiled extras needed. The page is one
hand-written HTML, JS and CSS file each (`opengato/serve/static/`, package data): no frontend
build, no CDN, so it works with no network.

How a page talks to it (JSON over plain HTTP, no WebSocket: robust through anything):

- `GET /api/info`: the served checkpoint, the registered tasks, the default (held-out) seed;
- `POST /api/episodes {task, seed, checkpoint?}`: a new episode, its id and first frame;
  `POST /api/episodes/{id}/step`: one env step, its frame, reward, return and action tokens;
  `DELETE /api/episodes/{id}`: close it. The page loops over `step` while playing;
- `POST /api/caption` (the image file as the raw body, at most `--max-upload-mb`);
- `POST /api/chat {message}`.

Every tab and every view of a tab plays its own episode, kept on the server by id, so tabs
never mix their episodes. Whatever touches torch or an env runs in one worker thread, one call
at a time: concurrent torch calls are safe, MuJoCo's EGL contexts stay in the thread that made
them, and the episodes of several tabs interleave step by step. Bad input (an unknown task, a
path that is no checkpoint, a file that is no image or is too large) is answered with a status
>= 400 and `{"detail": message}`, which the page shows.
"""

from __future__ import annotations

import asyncio
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import numpy as np
from tyro.conf import Positional, arg

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field
except ImportError as e:  # installed without the `serve` extra
    raise ImportError("opengato serve needs FastAPI and uvicorn: pip install -e '.[serve]'") from e

from opengato.seeds import EVAL_SEED_START
from opengato.serve.live import Agents, Episodes, ServeError, encode_frame, start_episode

STATIC = Path(__file__).parent / "static"
MAX_PIXELS = 40_000_000
"""Largest image (width x height) an upload may decode to."""
log = logging.getLogger("opengato.serve")


@dataclass
class ServeConfig:
    """Serve a local web page: watch a checkpoint play, caption images, chat, compare two."""

    checkpoint: Positional[Annotated[str, arg(metavar="CHECKPOINT")]]
    """Checkpoint folder or run folder (`random:<preset>` for a random-init model, `uniform` for
    uniformly random actions). Captions and chat use it; play and compare default to it."""
    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1: this machine only; the app has no authentication)."""
    port: int = 8000
    """Port to listen on."""
    device: str = "cpu"
    """Torch device of the models."""
    data_dir: str | None = None
    """Data root with the demonstrations (prompts) and scores.json (expert and random scores);
    None: the default data root ($OPENGATO_DATA)."""
    max_upload_mb: float = 10.0
    """Largest image upload accepted, in MB (larger ones are refused before being read)."""
    max_episodes: int = 32
    """Episodes kept live at once (over all tabs); the least recently stepped is closed."""
    max_checkpoints: int = 4
    """Other checkpoints (for comparisons) kept loaded besides the served one."""
    max_answer_tokens: int = 128
    """Most text tokens of a chat answer (captions: `language.CAPTION_MAX_TOKENS`, 64)."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    weights: Literal["packed", "plain", "int8", "compiled"] = "packed"
    """How a CPU runs the transformer, as in `opengato eval`: `packed` (the default), `plain`,
    `int8` (opt-in, not the paper: int8 weights for every checkpoint served; gato-79m acts at
    ~15-17 control steps/s at batch 1 on 2 cores against ~10.5 with its fp32 packed weights, and
    on the demo checkpoint scores stayed within a few points: benchmarks/RESULTS.md), or
    `compiled` (the model's own weights through torch.compile graphs: the first episode of a
    task compiles for ~10 s a shape, later ones reuse the graphs; on a GPU, CUDA graphs, not yet
    measured there).
    The page says when int8 is on."""


class Server:
    """The app's state: the checkpoints, the live episodes, and the one worker thread that
    touches them (`call` hands it work; the other methods but `shutdown` run in it)."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.agents = Agents(cfg.checkpoint, cfg.device, cfg.max_checkpoints,
                             int8=cfg.weights == "int8")  # fmt: skip
        self.episodes = Episodes(cfg.max_episodes)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="opengato-serve")
        self.upload_limit = int(cfg.max_upload_mb * 1_000_000)

    async def call(self, fn, *args):
        """Run `fn(*args)` in the worker thread and wait for it without blocking the loop."""
        return await asyncio.wrap_future(self.worker.submit(fn, *args))

    def info(self) -> dict:
        from opengato.tasks import list_tasks

        config = self.agents.pinned[2]
        return {
            "checkpoint": self.agents.served,
            "model": (config.get("model") or {}).get("name"),
            "step": config.get("step"),
            "tasks": list_tasks(),
            "default_task": "classic/CartPole-v1",
            "default_seed": EVAL_SEED_START,
            "max_upload_mb": self.cfg.max_upload_mb,
            "weights": self.cfg.weights,
        }

    def start(self, task: str, seed: int, checkpoint: str | None) -> dict:
        from opengato.data.scores import load_scores

        key, agent = self.agents.get(checkpoint)
        try:
            scores = load_scores(self.cfg.data_dir)
        except Exception as e:  # a corrupt table: play on, without reference scores
            log.warning("scores table unreadable: %s", e)
            scores = {}
        ep, view = start_episode(task, seed, key, agent, self.cfg.data_dir, scores,
                                 self.cfg.weights)  # fmt: skip
        self.episodes.add(ep)
        return view

    def step(self, episode_id: str) -> dict:
        return self.episodes.get(episode_id).step()

    def close(self, episode_id: str) -> dict:
        return {"closed": self.episodes.close(episode_id)}

    def _model(self) -> tuple:
        model, tokenizer, _ = self.agents.pinned
        if model is None:
            raise ServeError(f"the served checkpoint {self.agents.served!r} has no model")
        return model, tokenizer

    def caption(self, data: bytes, name: str) -> dict:
        """The caption of an uploaded image file, and the 64 x 64 image the model saw."""
        from PIL import Image

        from opengato.agent.language import caption_image, prepare_image

        model, tokenizer = self._model()
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ServeError(f"{name} is {img.width} x {img.height} pixels, too large")
            img = img.convert("RGB")
        except ServeError:
            raise
        except Exception as e:
            raise ServeError(f"{name} is not an image (PNG, JPEG, GIF, BMP, WebP...)") from e
        image = prepare_image(np.asarray(img))
        return {"caption": caption_image(model, tokenizer, image), "image": encode_frame(image)}

    def chat(self, message: str) -> dict:
        from opengato.agent.language import answer

        model, tokenizer = self._model()
        if not message.strip():
            raise ServeError("type a question first")
        return {"answer": answer(model, tokenizer, message.strip(), self.cfg.max_answer_tokens)}

    def shutdown(self) -> None:
        self.worker.submit(self.episodes.close_all).result()
        self.worker.shutdown()


async def read_upload(request: Request, limit: int, name: str) -> bytes:
    """The request body, refused (413) as soon as it is known to pass `limit` bytes: from its
    Content-Length before reading any of it, else while streaming, keeping at most `limit`."""
    too_big = f"{name} is larger than the {limit / 1e6:g} MB limit (--max-upload-mb)"
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise HTTPException(413, f"{name} is {int(size) / 1e6:.1f} MB; the limit is "
                                 f"{limit / 1e6:g} MB (--max-upload-mb)")  # fmt: skip
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, too_big)
    if not body:
        raise HTTPException(400, f"{name} is empty")
    return bytes(body)


class SameOrigin:
    """ASGI middleware refusing state-changing requests from pages of other origins (another
    site open in the same browser must not drive this one, nor make it load files)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and urlsplit(origin).netloc != host:
                response = JSONResponse({"detail": "cross-origin request refused"}, 403)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _error_handlers(app: FastAPI) -> None:
    """Every error reaches the page as `{"detail": "one readable line"}`."""

    @app.exception_handler(ServeError)
    async def bad_input(request, exc: ServeError):
        return JSONResponse({"detail": str(exc)}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc: RequestValidationError):
        lines = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
                 for e in exc.errors()]  # fmt: skip
        return JSONResponse({"detail": "; ".join(lines)}, 422)

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        log.exception("error serving %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)


class EpisodeRequest(BaseModel):
    """A new episode: a task, a reset seed, and a checkpoint (None: the served one)."""

    task: str = Field(min_length=1, max_length=200)
    seed: int = Field(EVAL_SEED_START, ge=0, lt=2**32)
    checkpoint: str | None = Field(None, max_length=4096)


class ChatRequest(BaseModel):
    message: str = Field(max_length=4000)


def make_app(server: Server) -> FastAPI:
    """The FastAPI app serving the page and the API over `server`."""

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.shutdown()

    app = FastAPI(title="opengato serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(SameOrigin)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _error_handlers(app)
    app.get("/", include_in_schema=False)(lambda: FileResponse(STATIC / "index.html"))

    @app.get("/api/info")
    async def info():
        return await server.call(server.info)

    @app.post("/api/episodes")
    async def start(req: EpisodeRequest):
        return await server.call(server.start, req.task, req.seed, req.checkpoint)

    @app.post("/api/episodes/{episode_id}/step")
    async def step(episode_id: str):
        return await server.call(server.step, episode_id)

    @app.delete("/api/episodes/{episode_id}")
    async def close(episode_id: str):
        return await server.call(server.close, episode_id)

    @app.post("/api/caption")
    async def caption(request: Request):
        name = unquote(request.headers.get("x-filename", "")) or "the upload"
        data = await read_upload(request, server.upload_limit, name)
        return await server.call(server.caption, data, name)

    @app.post("/api/chat")
    async def chat(req: ChatRequest):
        return await server.call(server.chat, req.message)

    return app


def run_serve(cfg: ServeConfig) -> int:
    """`opengato serve`: load the checkpoint, then serve the page until Ctrl-C."""
    import uvicorn

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    server = Server(cfg)  # a checkpoint that does not load fails here, in one line
    print(f"opengato serve: {server.agents.served} on http://{cfg.host}:{cfg.port}/ "
          "(Ctrl-C to stop)", flush=True)  # fmt: skip
    uvicorn.run(make_app(server), host=cfg.host, port=cfg.port, log_level="warning")
    return 0
