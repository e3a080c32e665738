"""The feedback web app: a labeling page, an owner's project page and the JSON API behind them.

Authentication is a bearer token in the ``Authorization`` header of every API call
(never a cookie), so a page on another site cannot make a labeler's browser submit
labels: there is nothing for a cross-site request to ride on. Pages are static HTML
whose script fills them in with ``textContent`` only, under a Content-Security-Policy
that forbids inline script, so text from items or critiques is always shown as text.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from rlxf.app.selection import QueryQueue, Scorer
from rlxf.app.stats import project_stats
from rlxf.data.label_store import (RECORD_KINDS, Labeler, LabelStore, Project, StoreError, export_records,
                                   response_steps)

STATIC = Path(__file__).parent / "static"
MAX_BODY = 256 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def create_app(store: LabelStore, project: Project, scorer: Scorer | None = None, duels=None,
               learned=None, video_dir: str | Path | None = None) -> FastAPI:
    """The app for one project of ``store``; ``scorer`` feeds the active selection rules, ``duels``
    (a :class:`rlxf.app.prompt_duels.PromptDuels`) makes a prompt-duel project's questions, ``learned``
    (a :class:`rlxf.policies.query.LearnedRule`) picks them under ``selection = "learned"``.
    ``video_dir`` holds the GIFs of video items (``meta["videos"]``: each response names a GIF there),
    which the labeling page shows side by side (BASALT-style episode comparisons, :mod:`rlxf.lab.basalt`)."""
    app = FastAPI(title=f"rlxf labels: {project.name}", docs_url=None, redoc_url=None, openapi_url=None)
    queue = QueryQueue(store, project, scorer, seed=int(project.settings.get("seed", 0)), duels=duels,
                       learned=learned)
    app.state.store, app.state.project, app.state.queue = store, project, queue

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, e: ApiError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, e: StoreError):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    async def labeler_of(request: Request) -> Labeler:
        token = _token(request)
        if token is None:
            raise ApiError(401, "missing token: send 'Authorization: Bearer YOUR_TOKEN'")
        labeler = await run_in_threadpool(store.labeler_for_token, project, token)
        if labeler is None:
            if await run_in_threadpool(store.is_owner, project, token):
                raise ApiError(403, "this is the owner token; labeling needs a labeler token (rlxf label add-labeler)")
            raise ApiError(401, "invalid token")
        return labeler

    async def require_owner(request: Request) -> None:
        token = _token(request)
        if token is None:
            raise ApiError(401, "missing token: send 'Authorization: Bearer OWNER_TOKEN'")
        if not await run_in_threadpool(store.is_owner, project, token):
            raise ApiError(403, "the project page needs the owner token")

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/label")

    @app.get("/label", include_in_schema=False)
    async def label_page():
        return FileResponse(STATIC / "label.html", media_type="text/html")

    @app.get("/project", include_in_schema=False)
    async def project_page():
        return FileResponse(STATIC / "project.html", media_type="text/html")

    @app.get("/api/me")
    async def me(request: Request):
        labeler = await labeler_of(request)
        done = await run_in_threadpool(store.label_count, project, labeler)
        return {"name": labeler.name, "project": project.name, "kind": project.kind, "labeled": done}

    @app.get("/api/next")
    async def next_assignment(request: Request):
        labeler = await labeler_of(request)
        a = await run_in_threadpool(queue.next, labeler)
        if a is None:
            return {"done": True}
        out = {"done": False, "assignment_id": a.id, "item_id": a.item.id, "kind": project.kind,
               "prompt": a.item.prompt, "responses": [a.item.responses[i] for i in a.shown],
               "scale": project.settings["scale"], "max_critique_chars": project.settings["max_critique_chars"]}
        if project.kind == "critique":  # the steps a labeler may mark as the first wrong one
            out["steps"] = response_steps(a.item, a.shown[0])
        if a.item.meta.get("videos"):  # the page fetches each clip with the labeler's token
            out["videos"] = [f"/api/video?assignment={a.id}&k={k}" for k in range(len(a.shown))]
        return out

    @app.get("/api/video")
    async def video(request: Request, assignment: int, k: int):
        """The ``k``-th shown clip of the labeler's open assignment (no other clip can be fetched)."""
        labeler = await labeler_of(request)
        a = await run_in_threadpool(store.open_assignment, project, labeler)
        if a is None or a.id != assignment or not a.item.meta.get("videos") or not 0 <= k < len(a.shown):
            raise ApiError(404, "no such clip in your open assignment")
        path = video_file(video_dir, a.item.responses[a.shown[k]])
        if path is None:
            raise ApiError(404, f"clip {a.item.responses[a.shown[k]]!r} is missing from the project's videos/ folder")
        return FileResponse(path, media_type="image/gif")

    @app.post("/api/labels")
    async def submit(request: Request):
        labeler = await labeler_of(request)
        body = await _json_body(request)
        lid = await run_in_threadpool(store.submit_label, project, labeler, body.get("assignment_id"),
                                      body.get("item_id"), body.get("value"))
        return {"ok": True, "label_id": lid}

    @app.get("/api/project")
    async def stats(request: Request):
        await require_owner(request)

        def gather() -> dict:
            labels = store.labels(project)
            names = [w.name for w in store.labelers(project)]
            out = project_stats(store.counts(project), labels, names, project.settings["overlap"])
            out["recent"] = [{"labeler": l.labeler, "item_id": l.item.id, "prompt": l.item.prompt,
                              "value": l.value} for l in labels[-10:][::-1]]
            if duels is not None:  # the prompt APOHF reports now
                out["best_prompt"] = duels.reported(store, project)
            return {"project": project.name, "kind": project.kind, "settings": project.settings, **out}

        return await run_in_threadpool(gather)

    @app.get("/api/export")
    async def export(request: Request, record: str | None = None, format: str = "jsonl"):
        await require_owner(request)
        allowed = RECORD_KINDS[project.kind]
        record = record or allowed[0]
        if record not in allowed:
            raise ApiError(400, f"record must be one of {', '.join(allowed)} for a {project.kind} project")
        if format not in ("jsonl", "parquet"):
            raise ApiError(400, "format must be jsonl or parquet")
        data = await run_in_threadpool(_export_bytes, store, project, record, format)
        name = f"{project.name}-{record}s.{format}"
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def video_file(video_dir: str | Path | None, name: str) -> Path | None:
    """The GIF ``name`` inside ``video_dir``, or None: a bare ``*.gif`` file name only, never a path."""
    if video_dir is None or Path(name).name != name or not name.endswith(".gif") or name.startswith("."):
        return None
    path = Path(video_dir) / name
    return path if path.is_file() else None


def listening_socket(host: str, port: int):
    """A bound TCP socket for uvicorn with TCP_NODELAY, which accepted connections inherit.
    Without it, small JSON responses wait on Nagle's algorithm and delayed ACKs (~40 ms each)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body is {len(raw)} bytes; the limit is {MAX_BODY}")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _export_bytes(store: LabelStore, project: Project, record: str, fmt: str) -> bytes:
    from rlxf.data.io import write_records

    records = export_records(store, project).get(record, [])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"export.{fmt}"
        if not records:
            return b""
        write_records(records, path)
        return path.read_bytes()
