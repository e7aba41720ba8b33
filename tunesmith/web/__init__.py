"""The web dashboard served at ``/`` by ``tunesmith serve``: pages that hold no data (so they need no
key to load) and a script that reads and writes everything through the ``/v1`` API with the key the
user enters once (kept in the browser's sessionStorage), or none when the server is keyless."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
# (path, template, title in the navigation); the job page is reached from the jobs list
PAGES = [("/", "files.html", "Files"), ("/jobs", "jobs.html", "Jobs"), ("/playground", "playground.html", "Playground"),
         ("/models", "models.html", "Models")]

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)  # pages, not API: the OpenAPI document stays the API's
static = StaticFiles(directory=HERE / "static")


# The key sits in the page's sessionStorage: only the package's own scripts run, nothing may be
# fetched from or sent to another origin, and no other site may frame the page. Inline styles are
# allowed for the evaluation report (a self-contained HTML file shown in a sandboxed frame) and uPlot.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _render(request: Request, template: str, **context) -> HTMLResponse:
    # Whether the server is keyless is all a page learns of the server: in that mode anyone who can
    # load the page may use the API anyway (loopback only, see api/gate.py).
    keyless = request.app.state.store.settings.keyless
    page = templates.TemplateResponse(request, template, {"pages": PAGES, "keyless": keyless, **context})
    page.headers["Content-Security-Policy"] = CSP
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


def _page(template: str):
    def page(request: Request) -> HTMLResponse:
        return _render(request, template)
    return page


for _path, _template, _ in PAGES:
    router.add_api_route(_path, _page(_template), methods=["GET"], response_class=HTMLResponse)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    return _render(request, "job.html", job_id=job_id)  # autoescaped; the script checks it against the API
